"""Tiny random Hugging Face PyTorch models saved as safetensors: the independent reference."""

import numpy as np
import torch
import transformers


def tiny_hf_model(family: str, seed: int = 0, **overrides):
  torch.manual_seed(seed)
  if family == "gpt2":
    cfg = transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=48, n_layer=2, n_head=4,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **overrides)
    model = transformers.GPT2LMHeadModel(cfg)
  elif family == "llama":
    kw = dict(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              rope_theta=500.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
    kw.update(overrides)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kw))
  else:
    raise ValueError(family)
  with torch.no_grad():  # make biases and norms non-trivial so the import is really checked
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name or "ln_" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model.eval()


def hf_logits(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Reference logits with positions counted over real tokens (as qpo_jax does)."""
  pos = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long),
                position_ids=torch.tensor(pos, dtype=torch.long))
  return out.logits.float().numpy()
