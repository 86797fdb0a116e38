"""Writes tiny llama.cpp-style GGUF files (Q/K rows permuted, mixed quant types) for tests."""

import gguf
import numpy as np

# tensor -> storage type, so every dequantization path is exercised
QUANT = {"attn_q": "F16", "attn_k": "Q8_0", "attn_v": "Q4_0", "attn_output": "Q4_1",
         "ffn_gate": "Q8_0", "ffn_up": "Q4_1", "ffn_down": "Q4_0", "token_embd": "Q8_0"}


def llama_cpp_permute(w, n_heads):
  """llama.cpp's conversion of HF Q/K rows (half-split RoPE -> interleaved)."""
  return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def roundtrip(w, qtype_name):
  """What a reader gets back for `w` stored as `qtype_name`."""
  qt = gguf.GGMLQuantizationType[qtype_name]
  return gguf.quants.dequantize(gguf.quants.quantize(w, qt), qt).reshape(w.shape)


def write_llama_gguf(path, hf_model, drop=(), arch="llama"):
  """Writes `hf_model` (a LlamaForCausalLM) as GGUF; returns HF-named dequantized weights."""
  c = hf_model.config
  sd = {k: v.float().numpy() for k, v in hf_model.state_dict().items()}
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(c.num_hidden_layers)
  w.add_context_length(c.max_position_embeddings)
  w.add_embedding_length(c.hidden_size)
  w.add_feed_forward_length(c.intermediate_size)
  w.add_head_count(c.num_attention_heads)
  w.add_head_count_kv(c.num_key_value_heads)
  w.add_rope_freq_base(c.rope_theta if hasattr(c, "rope_theta") else c.rope_parameters["rope_theta"])
  w.add_layer_norm_rms_eps(c.rms_norm_eps)
  w.add_vocab_size(c.vocab_size)
  expected = {}
  names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
  hf_suffix = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
               "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}
  for i in range(c.num_hidden_layers):
    for h, g in hf_suffix.items():
      names[f"model.layers.{i}.{h}.weight"] = f"blk.{i}.{g}.weight"
  for hf_name, arr in sd.items():
    if hf_name not in names or names[hf_name] in drop:
      continue
    name = names[hf_name]
    kind = name.split(".")[-2]
    qname = QUANT.get(kind, "F32")
    deq = roundtrip(arr, qname) if qname != "F32" else arr
    expected[hf_name] = deq
    stored = deq
    if kind == "attn_q":
      stored = llama_cpp_permute(arr, c.num_attention_heads)
    elif kind == "attn_k":
      stored = llama_cpp_permute(arr, c.num_key_value_heads)
    if qname == "F32":
      w.add_tensor(name, np.ascontiguousarray(stored, np.float32))
    elif qname == "F16":
      w.add_tensor(name, np.ascontiguousarray(stored, np.float16))
    else:
      qt = gguf.GGMLQuantizationType[qname]
      w.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(stored), qt), raw_dtype=qt)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return expected
