"""Hugging Face Llama, Mistral, Qwen2 and Qwen3 (``*ForCausalLM``) <-> :class:`zoo.models.gpt.GPT`.

The three are one layout: RMSNorm before attention and MLP, RoPE in the "rotate half" layout
(zoo's :func:`zoo.layers.positional.apply_rope`, so q/k weights need no permutation), grouped
KV heads, a SwiGLU MLP and an untied head (Qwen2.5 small models tie it). Mistral adds a
sliding window, Qwen2 biases on q/k/v, Qwen3 an RMSNorm on each query and key head
(``qk_norm``). Torch ``nn.Linear`` weights are ``[out, in]``.

======================================================  =====================================
Hugging Face                                            zoo
======================================================  =====================================
model.embed_tokens.weight [V, D]                        wte/embedding [V, D]
model.layers.i.input_layernorm.weight [D]               decoder/layers_i/attn_norm/scale
model.layers.i.self_attn.q_proj.weight [N*H, D]         decoder/layers_i/attn/query/kernel [D, N, H]
model.layers.i.self_attn.{k,v}_proj.weight [K*H, D]     .../attn/{key,value}/kernel [D, K, H]
model.layers.i.self_attn.{q,k,v}_proj.bias (Qwen2)      .../attn/{query,key,value}/bias [N|K, H]
model.layers.i.self_attn.{q,k}_norm.weight [H] (Qwen3)  .../attn/{query,key}_norm/scale [H]
model.layers.i.self_attn.o_proj.weight [D, N*H]         decoder/layers_i/attn/out/kernel [N, H, D]
model.layers.i.post_attention_layernorm.weight [D]      decoder/layers_i/mlp_norm/scale
model.layers.i.mlp.gate_proj.weight [F, D]              decoder/layers_i/mlp/gate/kernel [D, F]
model.layers.i.mlp.up_proj.weight [F, D]                decoder/layers_i/mlp/wi/kernel [D, F]
model.layers.i.mlp.down_proj.weight [D, F]              decoder/layers_i/mlp/wo/kernel [F, D]
model.norm.weight [D]                                   ln_f/scale
lm_head.weight [V, D] (untied)                          lm_head/kernel [D, V]
======================================================  =====================================

RoPE variants come from ``rope_parameters`` (transformers 5) or ``rope_scaling`` +
``rope_theta`` (older files): ``default``, ``linear`` and ``llama3``; any other type is a
ValueError naming it. Every tensor is one-to-one, so a mesh load reads per-device blocks.
"""

from __future__ import annotations

from typing import Any

from zoo.models.gpt import GPTConfig
from zoo.pretrained import keymap as km
from zoo.pretrained.converter import Converter

MODEL_TYPE = "llama"
MODEL_TYPES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
               "Qwen2ForCausalLM": "qwen2", "Qwen3ForCausalLM": "qwen3"}
QWEN = ("Qwen2ForCausalLM", "Qwen3ForCausalLM")  # a use_sliding_window switch, per-layer windows
PREFIX = "model."
ROPE_TYPES = ("default", "linear", "llama3")
# GPTConfig fields of the Gemma layout (zoo.pretrained.gemma), which Llama configs lack.
GEMMA_OPTIONS = ("layer_types", "local_rope_base", "norm_scale_offset", "sublayer_post_norm",
                 "scale_embeddings", "attention_scale", "attention_softcap",
                 "final_logit_softcap")


def matches(cfg) -> bool:
  """``cfg`` is a Llama-layout GPT (exported by this converter rather than GPT-2's, Gemma's
  or Phi-3's)."""
  return (cfg.position == "rope" and cfg.norm == "rmsnorm" and cfg.gated_mlp
          and not cfg.norm_scale_offset and cfg.hf_architecture in (None, *MODEL_TYPES))


def _rope_fields(hf: dict[str, Any]) -> dict[str, Any]:
  """RoPE base and scaling from ``rope_parameters`` or the older ``rope_scaling``/``rope_theta``."""
  params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
  theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
  kind = params.get("rope_type", params.get("type", "default"))
  if kind not in ROPE_TYPES:
    raise ValueError(
        f"rope_type={kind!r} (rope_parameters / rope_scaling) is not implemented by zoo; it "
        f"implements {', '.join(ROPE_TYPES)}. Use a checkpoint with one of those, or add the "
        "variant to zoo.layers.positional.rope_frequencies."
    )
  out: dict[str, Any] = {"rope_base": float(theta)}
  if kind == "linear":
    out.update(rope_scaling="linear", rope_factor=float(params["factor"]))
  elif kind == "llama3":
    out.update(
        rope_scaling="llama3", rope_factor=float(params["factor"]),
        rope_low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        rope_high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        rope_original_max_len=int(params["original_max_position_embeddings"]),
    )
  return out


def _sliding_window(hf: dict[str, Any], arch: str) -> int | None:
  window = hf.get("sliding_window")
  if arch == "LlamaForCausalLM" or window is None:
    return None
  if arch in QWEN and not hf.get("use_sliding_window", False):
    return None
  longest = hf.get("max_position_embeddings")
  if longest is not None and window > longest:
    # zoo's KV cache is full-length (one slot per position, no ring buffer), so a cache
    # shorter than the window is harmless at run time; a checkpoint whose every cache must be
    # shorter than its window, though, describes a window that never cuts: a misread config.
    raise ValueError(
        f"sliding_window={window} is longer than max_position_embeddings={longest}, so every "
        "KV cache of this model is shorter than the window and it would never apply; set "
        f"sliding_window to null (full attention) or to at most {longest}."
    )
  if arch in QWEN:
    layers = hf.get("layer_types") or []
    if any(t != "sliding_attention" for t in layers) or hf.get("max_window_layers", 0) > 0:
      raise ValueError(
          f"use_sliding_window=true with max_window_layers={hf.get('max_window_layers')} "
          "(sliding attention on some layers only) is not supported: zoo applies one window "
          "to every layer. Set max_window_layers=0 or use_sliding_window=false."
      )
  return int(window)


def config_from_hf(hf: dict[str, Any], arch: str, keys=()) -> dict[str, Any]:
  """Llama / Mistral / Qwen2 ``config.json`` -> :class:`GPTConfig` fields."""
  activation = km.activation_from_hf(hf.get("hidden_act", "silu"), "hidden_act")
  for key in ("attention_bias", "mlp_bias"):
    if hf.get(key):
      raise ValueError(
          f"{key}=true is not supported (zoo's Llama layout has biases on q/k/v only, as "
          "Qwen2); use a checkpoint without them."
      )
  d, n = hf["hidden_size"], hf["num_attention_heads"]
  kv = hf.get("num_key_value_heads") or n
  if n % kv:
    raise ValueError(
        f"num_attention_heads={n} is not a multiple of num_key_value_heads={kv}: each KV head "
        "serves a whole group of query heads. Fix num_key_value_heads (it must divide "
        f"num_attention_heads, e.g. {', '.join(str(k) for k in range(1, n + 1) if n % k == 0)})."
    )
  head_dim = hf.get("head_dim") or d // n
  tie = hf.get("tie_word_embeddings", "lm_head.weight" not in keys)
  return dict(
      vocab_size=hf["vocab_size"],
      max_len=hf.get("max_position_embeddings", 2048),
      d_model=d,
      num_heads=n,
      num_kv_heads=kv,
      num_layers=hf["num_hidden_layers"],
      mlp_dim=hf["intermediate_size"],
      head_dim=head_dim if head_dim != d // n else None,
      position="rope",
      **_rope_fields(hf),
      sliding_window=_sliding_window(hf, arch),
      activation=activation,
      gated_mlp=True,
      norm="rmsnorm",
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      use_bias=False,
      qkv_bias=True if arch == "Qwen2ForCausalLM" else None,
      qk_norm=arch == "Qwen3ForCausalLM",
      tie_embeddings=bool(tie),
      dropout_rate=0.0,
      attention_dropout_rate=float(hf.get("attention_dropout", 0.0)),
      init_std=float(hf.get("initializer_range", 0.02)),
      scale_residual_init=False,
  )


def _arch(cfg) -> str:
  if cfg.qk_norm:
    return "Qwen3ForCausalLM"
  if cfg.qkv_bias:
    return "Qwen2ForCausalLM"
  return "MistralForCausalLM" if cfg.sliding_window is not None else "LlamaForCausalLM"


def _export_problems(cfg) -> list[str]:
  """What a :class:`GPTConfig` has that no Llama / Mistral / Qwen2 / Qwen3 file can say."""
  problems = []
  if cfg.activation != "silu":
    problems.append(f"activation={cfg.activation!r} (the Llama MLP is SiLU-gated)")
  if cfg.use_bias:
    problems.append("use_bias=True (Llama has no biases; Qwen2 only on q/k/v: qkv_bias=True)")
  if cfg.qkv_bias and cfg.sliding_window is not None:
    problems.append("qkv_bias with sliding_window (Qwen2 windows are per-layer in transformers)")
  if cfg.qkv_bias is False:
    problems.append("qkv_bias=False (use None: no biases anywhere)")
  if cfg.qk_norm and (cfg.qkv_bias or cfg.sliding_window is not None):
    problems.append("qk_norm with qkv_bias or sliding_window (Qwen3 has neither here)")
  problems += [f"{name}={getattr(cfg, name)!r} (a Gemma option)" for name in GEMMA_OPTIONS
               if getattr(cfg, name)]
  return problems


def config_to_hf(cfg) -> dict[str, Any]:
  """:class:`GPTConfig` in the Llama layout -> Llama / Mistral / Qwen2 / Qwen3 ``config.json``."""
  problems = _export_problems(cfg)
  if problems:
    raise ValueError("this GPTConfig has no Llama/Mistral/Qwen2 equivalent: "
                     + "; ".join(problems) + ".")
  arch = _arch(cfg)
  rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_base}
  if cfg.rope_scaling == "linear":
    rope.update(rope_type="linear", factor=cfg.rope_factor)
  elif cfg.rope_scaling == "llama3":
    rope.update(
        rope_type="llama3", factor=cfg.rope_factor, low_freq_factor=cfg.rope_low_freq_factor,
        high_freq_factor=cfg.rope_high_freq_factor,
        original_max_position_embeddings=cfg.rope_original_max_len,
    )
  out = {
      "architectures": [arch],
      "model_type": MODEL_TYPES[arch],
      "vocab_size": cfg.vocab_size,
      "max_position_embeddings": cfg.max_len,
      "hidden_size": cfg.d_model,
      "intermediate_size": cfg.mlp_dim,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads or cfg.num_heads,
      "head_dim": cfg.head_dim or cfg.d_model // cfg.num_heads,
      "hidden_act": "silu",
      "rms_norm_eps": cfg.norm_eps,
      "rope_parameters": rope,
      "rope_theta": cfg.rope_base,
      "attention_dropout": cfg.attention_dropout_rate,
      "initializer_range": cfg.init_std,
      "tie_word_embeddings": cfg.tie_embeddings,
  }
  if arch == "MistralForCausalLM":
    out["sliding_window"] = cfg.sliding_window
    # A model trained at a context shorter than its window (mistral-7b at 2048) still names
    # a context the window fits in, so that the file reads back (see _sliding_window).
    out["max_position_embeddings"] = max(cfg.max_len, cfg.sliding_window)
  if arch in QWEN:
    out.update(use_sliding_window=False, sliding_window=None, max_window_layers=0)
  if arch == "Qwen3ForCausalLM":
    out.update(attention_bias=False, max_window_layers=cfg.num_layers)
  if arch == "LlamaForCausalLM":
    out.update(attention_bias=False, mlp_bias=False)
  return out


def ignore(hf: dict[str, Any], arch: str) -> tuple[str, ...]:
  """Tensors that may be present and unused: old RoPE buffers, the tied output copy."""
  patterns = ["*.rotary_emb.inv_freq"]
  if hf.get("tie_word_embeddings", False):
    patterns.append("lm_head.weight")
  return tuple(patterns)


def entries(cfg, arch: str) -> list[km.Entry]:
  """The key map for ``cfg`` (names as ``arch`` saves them)."""
  n, kv = cfg.num_heads, cfg.num_kv_heads or cfg.num_heads
  h = cfg.head_dim or cfg.d_model // cfg.num_heads
  p = PREFIX
  out = [km.same(f"{p}embed_tokens.weight", "wte/embedding"),
         km.same(f"{p}norm.weight", "ln_f/scale")]
  for i in range(cfg.num_layers):
    s, z = f"{p}layers.{i}.", f"decoder/layers_{i}/"
    a = f"{s}self_attn."
    out += [
        km.same(f"{s}input_layernorm.weight", f"{z}attn_norm/scale"),
        km.linear_to_heads(f"{a}q_proj.weight", f"{z}attn/query/kernel", n, h),
        km.linear_to_heads(f"{a}k_proj.weight", f"{z}attn/key/kernel", kv, h),
        km.linear_to_heads(f"{a}v_proj.weight", f"{z}attn/value/kernel", kv, h),
        km.linear_from_heads(f"{a}o_proj.weight", f"{z}attn/out/kernel", n, h),
        km.same(f"{s}post_attention_layernorm.weight", f"{z}mlp_norm/scale"),
        km.linear(f"{s}mlp.gate_proj.weight", f"{z}mlp/gate/kernel"),
        km.linear(f"{s}mlp.up_proj.weight", f"{z}mlp/wi/kernel"),
        km.linear(f"{s}mlp.down_proj.weight", f"{z}mlp/wo/kernel"),
    ]
    if cfg.qk_norm:
      out += [km.same(f"{a}q_norm.weight", f"{z}attn/query_norm/scale"),
              km.same(f"{a}k_norm.weight", f"{z}attn/key_norm/scale")]
    if cfg.qkv_bias:
      out += [
          km.heads_bias(f"{a}q_proj.bias", f"{z}attn/query/bias", n, h),
          km.heads_bias(f"{a}k_proj.bias", f"{z}attn/key/bias", kv, h),
          km.heads_bias(f"{a}v_proj.bias", f"{z}attn/value/bias", kv, h),
      ]
  if not cfg.tie_embeddings:
    out.append(km.linear("lm_head.weight", "lm_head/kernel"))
  return out


def describe(cfg) -> str:
  return (
      f"vocab_size={cfg.vocab_size}, hidden_size={cfg.d_model}, num_attention_heads="
      f"{cfg.num_heads}, num_key_value_heads={cfg.num_kv_heads or cfg.num_heads}, head_dim="
      f"{cfg.head_dim or cfg.d_model // cfg.num_heads}, intermediate_size={cfg.mlp_dim}"
  )


CONVERTER = Converter(
    module=__name__,
    config_cls=GPTConfig,
    model_type=MODEL_TYPE,
    architectures=tuple(MODEL_TYPES),
    prefix=PREFIX,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    entries=entries,
    ignore=ignore,
    describe=describe,
    model_types=MODEL_TYPES,
    head_params=("lm_head",),
    matches=matches,
)
