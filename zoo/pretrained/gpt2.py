"""Hugging Face GPT-2 (``GPT2LMHeadModel``, ``GPT2Model``) <-> :class:`zoo.models.gpt.GPT`.

GPT-2 uses ``Conv1D`` layers, whose weights are stored ``[in, out]`` (already the flax
layout), and one fused ``c_attn`` projection ``[D, 3D]`` = ``[q | k | v]``, each ``[D, N*H]``.

=================================  ==========================================
Hugging Face                       zoo
=================================  ==========================================
wte.weight [V, D]                  wte/embedding [V, D]
wpe.weight [P, D]                  wpe/embedding [P, D]
h.i.ln_1.{weight,bias}             decoder/layers_i/attn_norm/{scale,bias}
h.i.attn.c_attn.weight [D, 3D]     decoder/layers_i/attn/{query,key,value}/kernel [D, N, H]
h.i.attn.c_attn.bias [3D]          decoder/layers_i/attn/{query,key,value}/bias [N, H]
h.i.attn.c_proj.weight [D, D]      decoder/layers_i/attn/out/kernel [N, H, D]
h.i.ln_2.{weight,bias}             decoder/layers_i/mlp_norm/{scale,bias}
h.i.mlp.c_fc.{weight,bias}         decoder/layers_i/mlp/wi/{kernel,bias} [D, F]
h.i.mlp.c_proj.{weight,bias}       decoder/layers_i/mlp/wo/{kernel,bias} [F, D]
ln_f.{weight,bias}                 ln_f/{scale,bias}
lm_head.weight [V, D] (untied)     lm_head/kernel [D, V]
=================================  ==========================================

In ``GPT2LMHeadModel`` the base-model names carry the prefix ``transformer.``.
"""

from __future__ import annotations

from typing import Any

from zoo.models.gpt import GPTConfig
from zoo.pretrained import keymap as km
from zoo.pretrained.converter import Converter

MODEL_TYPE = "gpt2"
PREFIX = "transformer."


def config_from_hf(hf: dict[str, Any], arch: str, keys=()) -> dict[str, Any]:
  """GPT-2 ``config.json`` -> :class:`GPTConfig` fields."""
  activation = km.activation_from_hf(
      hf.get("activation_function", "gelu_new"), "GPT-2 activation_function"
  )
  for key, unsupported in (
      ("scale_attn_by_inverse_layer_idx", True),
      ("scale_attn_weights", False),
      ("add_cross_attention", True),
  ):
    if hf.get(key) is unsupported:
      raise ValueError(f"GPT-2 config {key}={unsupported} is not supported by zoo's GPT.")
  d = hf["n_embd"]
  return dict(
      vocab_size=hf["vocab_size"],
      max_len=hf["n_positions"],
      d_model=d,
      num_heads=hf["n_head"],
      num_layers=hf["n_layer"],
      mlp_dim=hf.get("n_inner") or 4 * d,
      activation=activation,
      norm_eps=hf.get("layer_norm_epsilon", 1e-5),
      tie_embeddings=hf.get("tie_word_embeddings", True) if arch != "GPT2Model" else True,
      dropout_rate=hf.get("resid_pdrop", 0.1),
      attention_dropout_rate=hf.get("attn_pdrop", 0.1),
      init_std=hf.get("initializer_range", 0.02),
  )


def config_to_hf(cfg) -> dict[str, Any]:
  """:class:`GPTConfig` -> GPT-2 ``config.json`` (``GPT2LMHeadModel``)."""
  problems = []
  if cfg.position != "learned":
    problems.append(f"position={cfg.position!r} (GPT-2 has a learned position table)")
  if cfg.norm != "layernorm":
    problems.append(f"norm={cfg.norm!r} (GPT-2 uses LayerNorm)")
  if not cfg.use_bias:
    problems.append("use_bias=False (GPT-2 has biases)")
  if cfg.num_kv_heads not in (None, cfg.num_heads):
    problems.append(f"num_kv_heads={cfg.num_kv_heads} (GPT-2 has no grouped-query attention)")
  if cfg.head_dim not in (None, cfg.d_model // cfg.num_heads):
    problems.append(f"head_dim={cfg.head_dim} != d_model / num_heads")
  if problems:
    raise ValueError("this GPTConfig has no GPT-2 equivalent: " + "; ".join(problems) + ".")
  eos = 50256 if cfg.vocab_size == 50257 else None  # GPT-2's <|endoftext|>
  return {
      "architectures": ["GPT2LMHeadModel"],
      "model_type": MODEL_TYPE,
      "vocab_size": cfg.vocab_size,
      "n_positions": cfg.max_len,
      "n_embd": cfg.d_model,
      "n_layer": cfg.num_layers,
      "n_head": cfg.num_heads,
      "n_inner": cfg.mlp_dim,
      "activation_function": km.activation_to_hf(cfg.activation, what="GPT-2 activation"),
      "layer_norm_epsilon": cfg.norm_eps,
      "resid_pdrop": cfg.dropout_rate,
      "embd_pdrop": cfg.dropout_rate,
      "attn_pdrop": cfg.attention_dropout_rate,
      "initializer_range": cfg.init_std,
      "tie_word_embeddings": cfg.tie_embeddings,
      "bos_token_id": eos,
      "eos_token_id": eos,
  }


def ignore(hf: dict[str, Any], arch: str) -> tuple[str, ...]:
  """Tensors that may be present and unused: causal-mask buffers, the tied output copy."""
  patterns = ["*.attn.bias", "*.attn.masked_bias"]
  if hf.get("tie_word_embeddings", True) or arch == "GPT2Model":
    patterns.append("lm_head.weight")
  return tuple(patterns)


def entries(cfg, arch: str) -> list[km.Entry]:
  """The key map for ``cfg`` (names as ``arch`` saves them)."""
  n, h = cfg.num_heads, cfg.d_model // cfg.num_heads
  p = "" if arch == "GPT2Model" else PREFIX
  out = [
      km.same(f"{p}wte.weight", "wte/embedding"),
      km.same(f"{p}wpe.weight", "wpe/embedding"),
      *km.norm(f"{p}ln_f", "ln_f"),
  ]
  for i in range(cfg.num_layers):
    s, z = f"{p}h.{i}.", f"decoder/layers_{i}/"
    qkv = [f"{z}attn/{name}" for name in ("query", "key", "value")]
    out += [
        *km.norm(f"{s}ln_1", f"{z}attn_norm"),
        # Conv1D [D, 3D]: columns are [q | k | v], each [D, N*H] with heads outermost.
        km.fused(f"{s}attn.c_attn.weight", [f"{q}/kernel" for q in qkv], 1,
                 lambda w: w.reshape(-1, n, h), lambda k: k.reshape(k.shape[0], -1)),
        km.fused(f"{s}attn.c_attn.bias", [f"{q}/bias" for q in qkv], 0,
                 lambda b: b.reshape(n, h), lambda b: b.reshape(-1)),
        km.tensor(f"{s}attn.c_proj.weight", f"{z}attn/out/kernel",
                  lambda w: w.reshape(n, h, -1), lambda k: k.reshape(n * h, -1)),
        km.same(f"{s}attn.c_proj.bias", f"{z}attn/out/bias"),
        *km.norm(f"{s}ln_2", f"{z}mlp_norm"),
        km.same(f"{s}mlp.c_fc.weight", f"{z}mlp/wi/kernel"),
        km.same(f"{s}mlp.c_fc.bias", f"{z}mlp/wi/bias"),
        km.same(f"{s}mlp.c_proj.weight", f"{z}mlp/wo/kernel"),
        km.same(f"{s}mlp.c_proj.bias", f"{z}mlp/wo/bias"),
    ]
  if not cfg.tie_embeddings:
    out.append(km.linear("lm_head.weight", "lm_head/kernel"))
  return out


def describe(cfg) -> str:
  return (
      f"vocab_size={cfg.vocab_size}, n_positions={cfg.max_len}, n_embd={cfg.d_model}, "
      f"n_head={cfg.num_heads}, n_inner={cfg.mlp_dim}"
  )


CONVERTER = Converter(
    module=__name__,
    config_cls=GPTConfig,
    model_type=MODEL_TYPE,
    architectures=("GPT2LMHeadModel", "GPT2Model"),
    prefix=PREFIX,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    entries=entries,
    ignore=ignore,
    describe=describe,
    head_params=("lm_head",),  # an untied output projection; tied ones are the embedding
)
