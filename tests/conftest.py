"""Test setup: 8 simulated CPU devices (set before JAX starts) and shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smollm2():
  """The real embedded SmolLM2-135M-Instruct, loaded once."""
  from qpo_jax.models.registry import load_model

  return load_model({"name": "smollm2-135m-instruct"})


@pytest.fixture(scope="session")
def smollm2_tokenizer():
  """SmolLM2's tokenizer alone (read from the GGUF metadata; no weights)."""
  import gguf

  from qpo_jax.checkpoints.gguf_import import tokenizer_from_gguf
  from qpo_jax.models.registry import smollm2_gguf_path

  path = smollm2_gguf_path()
  return tokenizer_from_gguf(gguf.GGUFReader(path), path)
