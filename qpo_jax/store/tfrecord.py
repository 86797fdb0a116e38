"""TFRecord framing without TensorFlow: write, read and verify record files.

A TFRecord file is a sequence of

  uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

(little endian; CRC-32C from the `crc32c` package). Files are written to a
temporary name and renamed, so a shard is either complete or absent. Reading
checks both CRCs of every record; a corrupt or truncated file fails with the
file name, the record index and the byte offset. `record_offsets` and
`read_record_at` give random access (a process of a multi-process run reads
only the records it needs), with the same checks.
"""

from __future__ import annotations

import hashlib
import os
import struct
from typing import BinaryIO, Iterable, Iterator

import crc32c

from qpo_jax.utils import atomic_open

_MASK_DELTA = 0xA282EAD8


class CorruptRecordError(ValueError):
  """A TFRecord file that does not verify; the message says which file and record."""


def masked_crc(data: bytes) -> int:
  crc = crc32c.crc32c(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
  length = struct.pack("<Q", len(data))
  return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def write_records(path: str, records: Iterable[bytes]) -> tuple[int, str]:
  """Writes serialized records atomically; returns (count, sha256 of the file)."""
  digest, count = hashlib.sha256(), 0
  with atomic_open(path, "wb") as fh:
    for data in records:
      framed = frame(data)
      fh.write(framed)
      digest.update(framed)
      count += 1
  return count, digest.hexdigest()


def _header(fh: BinaryIO, path: str, index: int, offset: int, verify: bool = True) -> int | None:
  """The data length of the record whose header starts at the file position (None at the end)."""
  header = fh.read(12)
  if not header:
    return None
  if len(header) < 12:
    raise CorruptRecordError(f"{path}: record {index} at byte {offset} is truncated "
                             f"(header of {len(header)} of 12 bytes)")
  length, length_crc = struct.unpack("<QI", header)
  if verify and masked_crc(header[:8]) != length_crc:
    raise CorruptRecordError(f"{path}: record {index} at byte {offset}: length CRC mismatch")
  return length


def _record(fh: BinaryIO, path: str, index: int, offset: int, verify: bool = True
            ) -> bytes | None:
  """The record at the file position, its CRCs checked (None at the end of the file)."""
  length = _header(fh, path, index, offset, verify)
  if length is None:
    return None
  data, footer = fh.read(length), fh.read(4)
  if len(data) < length or len(footer) < 4:
    raise CorruptRecordError(f"{path}: record {index} at byte {offset} is truncated "
                             f"({len(data)} of {length} data bytes)")
  if verify and masked_crc(data) != struct.unpack("<I", footer)[0]:
    raise CorruptRecordError(f"{path}: record {index} at byte {offset}: data CRC mismatch")
  return data


def _open(path: str) -> BinaryIO:
  if not os.path.exists(path):
    raise FileNotFoundError(f"TFRecord file {path} does not exist")
  return open(path, "rb")  # pylint: disable=consider-using-with


def read_records(path: str, verify: bool = True) -> Iterator[bytes]:
  """Yields the serialized records of a file, checking lengths and CRCs."""
  with _open(path) as fh:
    index, offset = 0, 0
    while (data := _record(fh, path, index, offset, verify)) is not None:
      yield data
      index += 1
      offset += 16 + len(data)


def record_offsets(path: str) -> list[int]:
  """The byte offset of every record of a file, from the headers alone (length CRCs checked)."""
  offsets: list[int] = []
  offset = 0
  with _open(path) as fh:
    size = os.fstat(fh.fileno()).st_size
    while (length := _header(fh, path, len(offsets), offset)) is not None:
      if offset + 16 + length > size:
        raise CorruptRecordError(f"{path}: record {len(offsets)} at byte {offset} is truncated "
                                 f"({size - offset - 12} of {length} + 4 bytes)")
      offsets.append(offset)
      offset += 16 + length
      fh.seek(offset)
  return offsets


def read_record_at(fh: BinaryIO, path: str, index: int, offset: int) -> bytes:
  """Record `index` of the open file `path`, which starts at byte `offset`; CRCs checked."""
  fh.seek(offset)
  data = _record(fh, path, index, offset)
  if data is None:
    raise CorruptRecordError(f"{path}: record {index} at byte {offset} is past the end of the file")
  return data


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as fh:
    for block in iter(lambda: fh.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()
