"""Hugging Face Phi-3 (``Phi3ForCausalLM``) <-> :class:`zoo.models.gpt.GPT`.

Phi-3 is the Llama layout (RMSNorm, RoPE, SwiGLU, no biases, untied head, Mistral's sliding
window) with two fused projections, split on import and fused again on export:

======================================================  =====================================
Hugging Face                                            zoo
======================================================  =====================================
model.layers.i.self_attn.qkv_proj.weight [(N+2K)*H, D]  .../attn/{query,key,value}/kernel
model.layers.i.mlp.gate_up_proj.weight [2F, D]          .../mlp/gate/kernel, .../mlp/wi/kernel
======================================================  =====================================

Every other tensor is named as in :mod:`zoo.pretrained.llama`. The config records
``hf_architecture="Phi3ForCausalLM"`` so that export writes Phi-3 again. The 128k variants'
LongRoPE (``rope_scaling`` type ``longrope`` / ``su``) and a ``partial_rotary_factor`` below 1
are refused with the field and value named.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from zoo.models.gpt import GPTConfig
from zoo.pretrained import keymap as km
from zoo.pretrained import llama
from zoo.pretrained.converter import Converter

ARCH = "Phi3ForCausalLM"
MODEL_TYPE = "phi3"


def matches(cfg) -> bool:
  return cfg.hf_architecture == ARCH


def _rope_params(hf: dict[str, Any]) -> dict[str, Any]:
  params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  kind = params.get("rope_type", params.get("type", "default"))
  if kind in ("longrope", "su"):
    raise ValueError(
        f"rope_scaling type {kind!r} (Phi-3's LongRoPE, the 128k-context variants) is not "
        "implemented by zoo; use a 4k-context Phi-3 checkpoint (rope_scaling null) or add the "
        "variant to zoo.layers.positional.rope_frequencies."
    )
  partial = params.pop("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
  if partial != 1.0:
    raise ValueError(
        f"partial_rotary_factor={partial} (RoPE on part of each head) is not implemented by "
        "zoo, which rotates whole heads; use a checkpoint with partial_rotary_factor 1.0."
    )
  return params


def config_from_hf(hf: dict[str, Any], arch: str, keys=()) -> dict[str, Any]:
  """Phi-3 ``config.json`` -> :class:`GPTConfig` fields (through the Llama reader)."""
  hf = {**hf, "rope_parameters": {"rope_theta": hf.get("rope_theta", 10000.0),
                                  **_rope_params(hf)}}
  hf.pop("rope_scaling", None)
  fields = llama.config_from_hf(hf, "MistralForCausalLM", keys)
  return {**fields, "hf_architecture": ARCH}


def config_to_hf(cfg) -> dict[str, Any]:
  """:class:`GPTConfig` in the Phi-3 layout -> ``config.json``."""
  if cfg.head_dim not in (None, cfg.d_model // cfg.num_heads):
    raise ValueError(
        f"head_dim={cfg.head_dim} has no Phi-3 equivalent (its head_dim is hidden_size // "
        f"num_attention_heads = {cfg.d_model // cfg.num_heads}); set head_dim=None."
    )
  out = llama.config_to_hf(_without_architecture(cfg))
  for key in ("head_dim", "attention_bias", "mlp_bias"):
    out.pop(key, None)
  out["rope_parameters"] = {**out["rope_parameters"], "partial_rotary_factor": 1.0}
  out.update(
      architectures=[ARCH], model_type=MODEL_TYPE, sliding_window=cfg.sliding_window,
      original_max_position_embeddings=out["max_position_embeddings"], resid_pdrop=0.0,
      embd_pdrop=0.0,
      # Phi3Config's own defaults (32000, ...) lie outside a smaller vocabulary; special
      # token ids come from the run or tokenizer (``save_pretrained(extra=...)``).
      pad_token_id=None, bos_token_id=None, eos_token_id=None,
  )
  return out


def _without_architecture(cfg):
  """``cfg`` without its ``hf_architecture`` (the Llama writer's checks read the rest)."""
  return dataclasses.replace(cfg, hf_architecture=None)


def entries(cfg, arch: str) -> list[km.Entry]:
  """Llama's key map with the fused q/k/v and gate/up projections."""
  n, kv = cfg.num_heads, cfg.num_kv_heads or cfg.num_heads
  h = cfg.head_dim or cfg.d_model // cfg.num_heads
  fused = {"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"}
  out = [e for e in llama.entries(cfg, "MistralForCausalLM")
         if not any(f".{name}." in e.src[0] for name in fused)]
  heads = lambda w, heads: w.T.reshape(-1, heads, h)  # noqa: E731
  flat = lambda k: k.reshape(k.shape[0], -1).T  # noqa: E731
  for i in range(cfg.num_layers):
    s, z = f"{llama.PREFIX}layers.{i}.", f"decoder/layers_{i}/"
    out += [
        km.fused_sizes(
            f"{s}self_attn.qkv_proj.weight",
            [f"{z}attn/query/kernel", f"{z}attn/key/kernel", f"{z}attn/value/kernel"],
            [n * h, kv * h, kv * h], 0,
            [lambda w: heads(w, n), lambda w: heads(w, kv), lambda w: heads(w, kv)],
            [flat, flat, flat],
        ),
        km.fused(f"{s}mlp.gate_up_proj.weight", [f"{z}mlp/gate/kernel", f"{z}mlp/wi/kernel"],
                 0, lambda w: w.T, lambda k: k.T),
    ]
  return out


CONVERTER = Converter(
    module=__name__,
    config_cls=GPTConfig,
    model_type=MODEL_TYPE,
    architectures=(ARCH,),
    prefix=llama.PREFIX,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    entries=entries,
    ignore=llama.ignore,
    describe=llama.describe,
    head_params=("lm_head",),
    matches=matches,
)
