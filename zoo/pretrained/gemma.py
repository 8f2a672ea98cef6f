"""Hugging Face Gemma, Gemma 2 and Gemma 3 text (``*ForCausalLM``) <-> :class:`zoo.models.gpt.GPT`.

The Llama layout (:mod:`zoo.pretrained.llama`) with Gemma's differences as GPT options:
a GeGLU MLP (``activation="gelu_tanh"``), RMSNorm scaled by ``1 + w``
(``norm_scale_offset=1``), embeddings times sqrt(d_model) (``scale_embeddings``) and tied
embeddings. Gemma 2 adds norms on each sublayer's output (``sublayer_post_norm``), soft-capped
attention and output logits, ``query_pre_attn_scalar`` (``attention_scale``) and alternating
local / global layers (``layer_types``); Gemma 3 adds q/k norms (``qk_norm``) and a separate
RoPE for local layers (``local_rope_base``).

======================================================  =====================================
Hugging Face                                            zoo
======================================================  =====================================
model.embed_tokens.weight [V, D]                        wte/embedding [V, D]
model.layers.i.input_layernorm.weight [D]               decoder/layers_i/attn_norm/scale
model.layers.i.self_attn.{q,k,v,o}_proj.weight          .../attn/{query,key,value,out}/kernel
model.layers.i.self_attn.{q,k}_norm.weight (Gemma 3)    .../attn/{query,key}_norm/scale [H]
model.layers.i.post_attention_layernorm.weight          Gemma: .../mlp_norm/scale;
                                                        Gemma 2 / 3: .../attn_post_norm/scale
model.layers.i.pre_feedforward_layernorm.weight         .../mlp_norm/scale (Gemma 2 / 3)
model.layers.i.post_feedforward_layernorm.weight        .../mlp_post_norm/scale (Gemma 2 / 3)
model.layers.i.mlp.{gate,up,down}_proj.weight           .../mlp/{gate,wi,wo}/kernel
model.norm.weight [D]                                   ln_f/scale
======================================================  =====================================
"""

from __future__ import annotations

import dataclasses
from typing import Any

from zoo.models.gpt import GPTConfig
from zoo.pretrained import keymap as km
from zoo.pretrained import llama
from zoo.pretrained.converter import Converter

MODEL_TYPES = {"GemmaForCausalLM": "gemma", "Gemma2ForCausalLM": "gemma2",
               "Gemma3ForCausalLM": "gemma3_text"}
KINDS = {"sliding_attention": "local", "full_attention": "global"}
PREFIX = llama.PREFIX


def matches(cfg) -> bool:
  return cfg.position == "rope" and cfg.norm == "rmsnorm" and cfg.norm_scale_offset == 1.0


def _activation(hf: dict[str, Any], arch: str) -> str:
  name = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
  if arch == "GemmaForCausalLM" and name == "gelu":
    name = "gelu_pytorch_tanh"  # transformers reads Gemma 1's legacy "gelu" as the tanh form
  return km.activation_from_hf(name, "hidden_activation")


def _layer_types(hf: dict[str, Any], arch: str) -> tuple[str, ...]:
  n = hf["num_hidden_layers"]
  types = hf.get("layer_types")
  if types is None:
    pattern = hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", 2))
    if not isinstance(pattern, int) or isinstance(pattern, bool) or pattern < 1:
      raise ValueError(
          f"sliding_window_pattern={pattern!r} must be a positive integer (every pattern-th "
          "layer is global); fix it or give layer_types."
      )
    types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
             for i in range(n)]
  unknown = sorted(set(types) - set(KINDS))
  if unknown:
    raise ValueError(f"layer_types holds {unknown}; zoo knows {sorted(KINDS)}.")
  if len(types) != n:
    raise ValueError(
        f"layer_types lists {len(types)} layers but num_hidden_layers={n}; give one entry "
        "per layer."
    )
  return tuple(KINDS[t] for t in types)


def _gemma3_rope(hf: dict[str, Any]) -> dict[str, Any]:
  """Global RoPE (base and scaling) and the local base, from either config.json layout."""
  params = hf.get("rope_parameters") or {}
  if "full_attention" in params:  # transformers 5: one rope_parameters entry per layer type
    glob, loc = params["full_attention"], params.get("sliding_attention", {})
  else:  # released files: rope_theta + rope_scaling (global), rope_local_base_freq (local)
    glob = {**(hf.get("rope_scaling") or {}), "rope_theta": hf.get("rope_theta", 1e6)}
    loc = {"rope_type": "default", "rope_theta": hf.get("rope_local_base_freq", 1e4)}
  if loc.get("rope_type", "default") != "default":
    raise ValueError(
        f"rope_parameters.sliding_attention rope_type={loc['rope_type']!r} is not implemented "
        "by zoo (local layers take an unscaled RoPE); use 'default'."
    )
  fields = llama._rope_fields({"rope_parameters": glob})
  return {**fields, "local_rope_base": float(loc.get("rope_theta", 1e4))}


def config_from_hf(hf: dict[str, Any], arch: str, keys=()) -> dict[str, Any]:
  """Gemma / Gemma 2 / Gemma 3 text ``config.json`` -> :class:`GPTConfig` fields."""
  if hf.get("attention_bias"):
    raise ValueError("attention_bias=true is not supported (Gemma has no biases).")
  if hf.get("use_bidirectional_attention"):
    raise ValueError("use_bidirectional_attention=true (an encoder) is not supported; zoo's "
                     "GPT is causal.")
  d, n = hf["hidden_size"], hf["num_attention_heads"]
  head_dim = hf.get("head_dim") or d // n
  out = dict(
      vocab_size=hf["vocab_size"], max_len=hf.get("max_position_embeddings", 8192), d_model=d,
      num_heads=n, num_kv_heads=hf.get("num_key_value_heads") or n,
      num_layers=hf["num_hidden_layers"], mlp_dim=hf["intermediate_size"],
      head_dim=head_dim if head_dim != d // n else None, position="rope",
      activation=_activation(hf, arch), gated_mlp=True, norm="rmsnorm",
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)), norm_scale_offset=1.0,
      scale_embeddings=True, use_bias=False,
      tie_embeddings=bool(hf.get("tie_word_embeddings", "lm_head.weight" not in keys)),
      dropout_rate=0.0, attention_dropout_rate=float(hf.get("attention_dropout", 0.0)),
      init_std=float(hf.get("initializer_range", 0.02)), scale_residual_init=False,
  )
  if arch == "GemmaForCausalLM":
    return {**out, **llama._rope_fields(hf)}
  scalar = hf.get("query_pre_attn_scalar", head_dim)
  out.update(
      sublayer_post_norm=True, attention_scale=float(scalar) ** -0.5,
      attention_softcap=hf.get("attn_logit_softcapping"),
      final_logit_softcap=hf.get("final_logit_softcapping"),
      sliding_window=hf.get("sliding_window"), layer_types=_layer_types(hf, arch),
  )
  if arch == "Gemma2ForCausalLM":
    return {**out, **llama._rope_fields(hf)}
  return {**out, **_gemma3_rope(hf), "qk_norm": True}


def _arch(cfg) -> str:
  if cfg.qk_norm:
    return "Gemma3ForCausalLM"
  return "Gemma2ForCausalLM" if cfg.sublayer_post_norm else "GemmaForCausalLM"


def _export_problems(cfg, arch: str) -> list[str]:
  problems = []
  if not cfg.scale_embeddings or not cfg.gated_mlp or cfg.use_bias:
    problems.append("scale_embeddings, gated_mlp and no biases are the Gemma layout")
  if cfg.qk_norm and not cfg.sublayer_post_norm:
    problems.append("qk_norm without sublayer_post_norm (Gemma 3 has both)")
  if arch == "GemmaForCausalLM":
    head_scale = (cfg.head_dim or cfg.d_model // cfg.num_heads) ** -0.5
    extra = [name for name in ("layer_types", "attention_softcap", "final_logit_softcap",
                               "sliding_window", "local_rope_base") if getattr(cfg, name)]
    if cfg.attention_scale not in (None, head_scale):
      extra.append("attention_scale")
    problems += [f"{name} (Gemma 2 / 3 only; set sublayer_post_norm=True)" for name in extra]
  if arch == "Gemma2ForCausalLM" and cfg.local_rope_base is not None:
    problems.append("local_rope_base (Gemma 3 only; set qk_norm=True)")
  return problems


def _rope(cfg) -> dict[str, Any]:
  """The global RoPE as ``rope_parameters`` (through the Llama writer's table)."""
  return llama.config_to_hf(_llama_view(cfg))["rope_parameters"]


def _llama_view(cfg):
  """``cfg`` without its Gemma options, for the Llama writer's RoPE table."""
  return dataclasses.replace(
      cfg, activation="silu", norm_scale_offset=0.0, scale_embeddings=False,
      sublayer_post_norm=False, attention_scale=None, attention_softcap=None,
      final_logit_softcap=None, layer_types=(), local_rope_base=None, qk_norm=False,
      sliding_window=None,
  )


def config_to_hf(cfg) -> dict[str, Any]:
  """:class:`GPTConfig` in the Gemma layout -> Gemma / Gemma 2 / Gemma 3 text ``config.json``."""
  arch = _arch(cfg)
  problems = _export_problems(cfg, arch)
  if problems:
    raise ValueError(f"this GPTConfig has no {arch} equivalent: " + "; ".join(problems) + ".")
  h = cfg.head_dim or cfg.d_model // cfg.num_heads
  act = km.activation_to_hf(cfg.activation, {"gelu_tanh": "gelu_pytorch_tanh"})
  out = {
      "architectures": [arch], "model_type": MODEL_TYPES[arch], "vocab_size": cfg.vocab_size,
      "max_position_embeddings": cfg.max_len, "hidden_size": cfg.d_model,
      "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads or
      cfg.num_heads, "head_dim": h, "rms_norm_eps": cfg.norm_eps,
      "attention_dropout": cfg.attention_dropout_rate, "initializer_range": cfg.init_std,
      "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": False,
      "rope_parameters": _rope(cfg), "pad_token_id": None, "bos_token_id": None,
      "eos_token_id": None,
  }
  if arch == "GemmaForCausalLM":
    return {**out, "hidden_act": act}
  scale = cfg.attention_scale or h**-0.5
  scalar = scale**-2
  kinds = {v: k for k, v in KINDS.items()}
  layer_types = cfg.layer_types or (
      ("local" if cfg.sliding_window else "global",) * cfg.num_layers)
  out.update(
      hidden_activation=act, query_pre_attn_scalar=round(scalar) if abs(scalar - round(
          scalar)) < 1e-6 * scalar else scalar,
      attn_logit_softcapping=cfg.attention_softcap,
      final_logit_softcapping=cfg.final_logit_softcap, sliding_window=cfg.sliding_window,
      layer_types=[kinds[t] for t in layer_types],
  )
  if arch == "Gemma3ForCausalLM":
    base = cfg.rope_base if cfg.local_rope_base is None else cfg.local_rope_base
    out["rope_parameters"] = {
        "full_attention": out["rope_parameters"],
        "sliding_attention": {"rope_type": "default", "rope_theta": base},
    }
    out["use_bidirectional_attention"] = False
  return out


def ignore(hf: dict[str, Any], arch: str) -> tuple[str, ...]:
  return llama.ignore({**hf, "tie_word_embeddings": hf.get("tie_word_embeddings", True)}, arch)


def entries(cfg, arch: str) -> list[km.Entry]:
  """The key map for ``cfg``: Llama's names plus Gemma 2 / 3's sublayer norms."""
  out = [e for e in llama.entries(cfg, arch) if "post_attention_layernorm" not in e.src[0]]
  for i in range(cfg.num_layers):
    s, z = f"{PREFIX}layers.{i}.", f"decoder/layers_{i}/"
    if not cfg.sublayer_post_norm:
      out.append(km.same(f"{s}post_attention_layernorm.weight", f"{z}mlp_norm/scale"))
      continue
    out += [
        km.same(f"{s}post_attention_layernorm.weight", f"{z}attn_post_norm/scale"),
        km.same(f"{s}pre_feedforward_layernorm.weight", f"{z}mlp_norm/scale"),
        km.same(f"{s}post_feedforward_layernorm.weight", f"{z}mlp_post_norm/scale"),
    ]
  return out


CONVERTER = Converter(
    module=__name__,
    config_cls=GPTConfig,
    model_type="gemma",
    architectures=tuple(MODEL_TYPES),
    prefix=PREFIX,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    entries=entries,
    ignore=ignore,
    describe=llama.describe,
    model_types=MODEL_TYPES,
    head_params=("lm_head",),
    matches=matches,
)
