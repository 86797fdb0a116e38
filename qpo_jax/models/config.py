"""Architecture description shared by every decoder-only LM in qpo_jax.

One frozen dataclass covers GPT-2 and the Llama family (Llama-2/3, Mistral,
Qwen2, SmolLM2): the differences are a handful of switches (norm type,
position encoding, MLP kind, biases, tied embeddings). Presets give the real
sizes so configs can name them and `jax.eval_shape` can check them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Sizes and switches of a decoder-only transformer."""

  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  head_dim: int
  d_ff: int
  max_len: int = 2048
  norm: str = "rmsnorm"  # "rmsnorm" (Llama) or "layernorm" (GPT-2)
  norm_eps: float = 1e-5
  position: str = "rope"  # "rope" or "learned"
  rope_theta: float = 10000.0
  # Llama-3.1 style frequency scaling: (factor, low_freq_factor,
  # high_freq_factor, original_max_len) or None.
  rope_scaling: tuple[float, float, float, int] | None = None
  mlp: str = "swiglu"  # "swiglu" (Llama) or "gelu" (GPT-2, tanh approximation)
  qkv_bias: bool = False
  out_bias: bool = False  # bias of the attention output projection
  mlp_bias: bool = False
  tie_embeddings: bool = False
  dropout: float = 0.0
  dtype: str = "float32"  # compute dtype
  param_dtype: str = "float32"  # master weights
  remat: bool = False  # rematerialise each block in the backward pass
  lora_rank: int = 0  # >0 adds low-rank adapters to the q and v projections
  lora_alpha: float = 16.0

  def __post_init__(self):
    checks = {
        "norm": (self.norm, ("rmsnorm", "layernorm")),
        "position": (self.position, ("rope", "learned")),
        "mlp": (self.mlp, ("swiglu", "gelu")),
        "dtype": (self.dtype, tuple(_DTYPES)),
        "param_dtype": (self.param_dtype, tuple(_DTYPES)),
    }
    for field, (value, allowed) in checks.items():
      if value not in allowed:
        raise ValueError(f"ModelConfig.{field}={value!r}; expected one of {allowed}")
    if self.n_heads % self.n_kv_heads:
      raise ValueError(
          f"ModelConfig: n_heads={self.n_heads} is not a multiple of "
          f"n_kv_heads={self.n_kv_heads}")
    if self.lora_rank < 0:
      raise ValueError(f"ModelConfig: lora_rank must be >= 0, got {self.lora_rank}")
    if self.position == "rope" and self.head_dim % 2:
      raise ValueError(f"ModelConfig: RoPE needs an even head_dim, got {self.head_dim}")

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def weight_dtype(self):
    return _DTYPES[self.param_dtype]

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def num_params(self) -> int:
    """Parameter count (embeddings included), for MFU and memory estimates."""
    d, f, hd = self.d_model, self.d_ff, self.head_dim
    n_mats = 3 if self.mlp == "swiglu" else 2
    attn = d * hd * (self.n_heads * 2 + self.n_kv_heads * 2)
    attn += self.qkv_bias * hd * (self.n_heads + 2 * self.n_kv_heads) + self.out_bias * d
    mlp = d * f * n_mats + self.mlp_bias * (f * (n_mats - 1) + d)
    norm = d * (2 if self.norm == "layernorm" else 1)
    emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    pos = self.max_len * d if self.position == "learned" else 0
    return self.n_layers * (attn + mlp + 2 * norm) + emb + pos + norm


def gpt2_like(**kw) -> ModelConfig:
  base = dict(norm="layernorm", position="learned", mlp="gelu", qkv_bias=True,
              out_bias=True, mlp_bias=True, tie_embeddings=True)
  base.update(kw)
  return ModelConfig(**base)


PRESETS: dict[str, ModelConfig] = {
    # Tiny models for tests: fast to compile, all code paths exercised.
    "tiny-gpt2": gpt2_like(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4,
                           head_dim=16, d_ff=256, max_len=256),
    "tiny-llama": ModelConfig(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                              head_dim=16, d_ff=160, max_len=256, rope_theta=10000.0),
    "gpt2-small": gpt2_like(vocab_size=50257, d_model=768, n_layers=12, n_heads=12,
                            n_kv_heads=12, head_dim=64, d_ff=3072, max_len=1024),
    "smollm2-135m": ModelConfig(vocab_size=49152, d_model=576, n_layers=30, n_heads=9,
                                n_kv_heads=3, head_dim=64, d_ff=1536, max_len=8192,
                                rope_theta=100000.0, tie_embeddings=True),
    "llama-2-7b": ModelConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32,
                              n_kv_heads=32, head_dim=128, d_ff=11008, max_len=4096),
    "llama-2-13b": ModelConfig(vocab_size=32000, d_model=5120, n_layers=40, n_heads=40,
                               n_kv_heads=40, head_dim=128, d_ff=13824, max_len=4096),
    "llama-2-70b": ModelConfig(vocab_size=32000, d_model=8192, n_layers=80, n_heads=64,
                               n_kv_heads=8, head_dim=128, d_ff=28672, max_len=4096),
    "llama-3-8b": ModelConfig(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32,
                              n_kv_heads=8, head_dim=128, d_ff=14336, max_len=8192,
                              rope_theta=500000.0),
    "mistral-7b": ModelConfig(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32,
                              n_kv_heads=8, head_dim=128, d_ff=14336, max_len=8192),
}
# tiny-llama with a 4k context: a random target that takes DSPy's long proposer prompts
PRESETS["tiny-llama-4k"] = PRESETS["tiny-llama"].replace(max_len=4096)


def preset(name: str, **overrides) -> ModelConfig:
  if name not in PRESETS:
    raise KeyError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}")
  return PRESETS[name].replace(**overrides)


# model_type values of Hugging Face config.json that we can build, and how.
_LLAMA_TYPES = {"llama": False, "mistral": False, "qwen2": True}  # -> qkv_bias


def from_hf_config(hf: Mapping[str, Any], source: str = "config.json", **overrides) -> ModelConfig:
  """Translates a Hugging Face `config.json` dict; unknown architectures fail clearly."""
  model_type = hf.get("model_type")
  try:
    if model_type == "gpt2":
      d = hf["n_embd"]
      cfg = gpt2_like(vocab_size=hf["vocab_size"], d_model=d, n_layers=hf["n_layer"],
                      n_heads=hf["n_head"], n_kv_heads=hf["n_head"], head_dim=d // hf["n_head"],
                      d_ff=hf.get("n_inner") or 4 * d, max_len=hf["n_positions"],
                      norm_eps=hf.get("layer_norm_epsilon", 1e-5))
      if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UnsupportedArchitecture(
            f"{source}: GPT-2 activation {hf['activation_function']!r} is not supported "
            "(only the tanh-approximated GELU)")
    elif model_type in _LLAMA_TYPES:
      if hf.get("hidden_act", "silu") != "silu":
        raise UnsupportedArchitecture(f"{source}: hidden_act {hf['hidden_act']!r} is not supported")
      n_heads = hf["num_attention_heads"]
      rope_scaling = None
      rs = hf.get("rope_scaling") or (hf.get("rope_parameters") or {})
      rs_type = rs.get("rope_type", rs.get("type", "default"))
      if rs_type == "llama3":
        rope_scaling = (float(rs["factor"]), float(rs["low_freq_factor"]),
                        float(rs["high_freq_factor"]),
                        int(rs["original_max_position_embeddings"]))
      elif rs_type != "default":
        raise UnsupportedArchitecture(f"{source}: rope scaling {rs_type!r} is not supported")
      theta = hf.get("rope_theta", rs.get("rope_theta", 10000.0))
      cfg = ModelConfig(
          vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
          n_layers=hf["num_hidden_layers"], n_heads=n_heads,
          n_kv_heads=hf.get("num_key_value_heads") or n_heads,
          head_dim=hf.get("head_dim") or hf["hidden_size"] // n_heads,
          d_ff=hf["intermediate_size"], max_len=hf.get("max_position_embeddings", 2048),
          norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=float(theta),
          rope_scaling=rope_scaling,
          qkv_bias=bool(hf.get("attention_bias", _LLAMA_TYPES[model_type])),
          out_bias=bool(hf.get("attention_bias", False)) and model_type != "qwen2",
          mlp_bias=bool(hf.get("mlp_bias", False)),
          tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
    else:
      raise UnsupportedArchitecture(
          f"{source}: unsupported architecture model_type={model_type!r}; supported: "
          f"{['gpt2', *_LLAMA_TYPES]}")
  except KeyError as e:
    raise UnsupportedArchitecture(f"{source}: missing field {e.args[0]!r} for {model_type}") from e
  return cfg.replace(**overrides)


class UnsupportedArchitecture(ValueError):
  """A checkpoint whose architecture qpo_jax cannot build."""
