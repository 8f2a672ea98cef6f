"""GPT: a decoder-only causal language model in the GPT-2 layout.

Token + learned position embeddings, pre-LN decoder blocks without cross-attention, a final
LayerNorm and an output projection tied to the token embedding. RoPE (instead of learned
positions) and grouped key/value heads are config switches.

The Llama family is a configuration of this one (``zoo/presets.py``: ``llama2-7b``,
``mistral-7b``, ``qwen2.5-0.5b`` ...): RoPE with optional frequency scaling, RMSNorm, a gated
SiLU MLP (SwiGLU), no biases (Qwen2: on q/k/v only), an untied head, grouped KV heads and, for
Mistral, sliding-window attention. ``zoo/pretrained/llama.py`` converts their checkpoints.

Shapes: B batch, L length, S key length (= L, or the cache length when decoding), D width,
V vocabulary.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from zoo import registry
from zoo.layers import attention as attn
from zoo.layers import masks
from zoo.layers.blocks import (
    Activation,
    BlockInputs,
    DecoderBlock,
    LayerInputs,
    NormKind,
    make_norm,
)
from zoo.layers.dropout import Dropout
from zoo.layers.fused_cross_entropy import Projection
from zoo.layers.positional import (
    LearnedPositionEmbedding,
    RopeScaling,
    RopeScalingKind,
    rope_frequencies,
    sinusoid_at,
)
from zoo.layers.stack import RematPolicy
from zoo.models import common

Array = jax.Array
GPTPosition = Literal["learned", "rope", "sinusoidal"]
LayerKind = Literal["local", "global"]  # sliding-window or full attention (Gemma 2 / 3)
GLOBAL_WINDOW = np.iinfo(np.int32).max  # the per-layer window of a global layer


@dataclasses.dataclass(frozen=True, kw_only=True)
class GPTConfig:
  """A GPT-2 / GPT-3 style decoder-only model."""

  vocab_size: int = 50257  # GPT-2 BPE
  max_len: int = 1024  # context length (size of the learned position table)
  d_model: int = 768
  num_heads: int = 12
  num_layers: int = 12
  mlp_dim: int = 3072
  head_dim: int | None = None  # None = d_model // num_heads
  num_kv_heads: int | None = None  # grouped-query attention; None = num_heads
  position: GPTPosition = "learned"
  rope_base: float = 10000.0  # Hugging Face rope_theta
  rope_scaling: RopeScalingKind = "none"  # frequency scaling for long contexts
  rope_factor: float = 1.0  # linear / llama3: low frequencies divided by this
  rope_low_freq_factor: float = 1.0  # llama3: wavelengths > original / this are scaled
  rope_high_freq_factor: float = 4.0  # llama3: wavelengths < original / this are kept
  rope_original_max_len: int = 8192  # llama3: the pre-training context
  sliding_window: int | None = None  # attend to the last W tokens only (Mistral); None = all
  layer_types: tuple[LayerKind, ...] = ()  # "local" / "global" per layer; () = all alike
  local_rope_base: float | None = None  # RoPE base of "local" layers, unscaled; None = global's
  qk_norm: bool = False  # RMSNorm on each query / key head before RoPE (Qwen3, Gemma 3)
  norm_scale_offset: float = 0.0  # RMSNorm multiplies by offset + scale (Gemma: 1)
  sublayer_post_norm: bool = False  # norms on attention and MLP outputs too (Gemma 2 / 3)
  scale_embeddings: bool = False  # token embeddings * sqrt(d_model) in the compute dtype (Gemma)
  attention_scale: float | None = None  # logits scale; None = 1/sqrt(head_dim)
  attention_softcap: float | None = None  # cap * tanh(logits / cap) in attention (Gemma 2)
  final_logit_softcap: float | None = None  # cap * tanh(logits / cap) on the output (Gemma 2)
  hf_architecture: str | None = None  # the class save_pretrained writes; None = by layout
  activation: Activation = "gelu_tanh"  # GPT-2's "gelu_new"
  gated_mlp: bool = False  # wo(act(gate(x)) * wi(x)): SwiGLU with activation="silu"
  norm: NormKind = "layernorm"
  norm_eps: float = 1e-5
  use_bias: bool = True
  qkv_bias: bool | None = None  # biases on query/key/value only (Qwen2); None = use_bias
  tie_embeddings: bool = True  # output projection = token embedding transposed
  dropout_rate: float = 0.0  # embedding and residual dropout
  attention_dropout_rate: float = 0.0
  init_std: float = 0.02
  scale_residual_init: bool = True  # GPT-2: residual projections init / sqrt(2 * num_layers)
  attention_impl: attn.Implementation | None = None
  scan_layers: bool = False  # nn.scan over layers (fast compile for deep models)
  remat_policy: RematPolicy = "none"
  dtype: Any = jnp.float32  # compute dtype
  param_dtype: Any = jnp.float32  # storage dtype

  def __post_init__(self):
    common.check_fields(self)  # types and ranges of every field, from the annotations
    if self.d_model % self.num_heads and self.head_dim is None:
      raise ValueError(
          f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
          "change one of them or set head_dim."
      )
    if self.position not in typing.get_args(GPTPosition):
      raise ValueError(
          f"position must be one of {typing.get_args(GPTPosition)}; got {self.position!r}."
      )
    common.check_stack_options(self.scan_layers, self.remat_policy)
    if self.rope_scaling != "none" and self.position != "rope":
      raise ValueError(
          f"rope_scaling={self.rope_scaling!r} scales RoPE frequencies but position="
          f"{self.position!r}; set position='rope' or rope_scaling='none'."
      )
    if self.rope_scaling != "none" and not self.rope_factor > 0:
      raise ValueError(f"rope_factor={self.rope_factor} must be > 0.")
    if self.rope_scaling == "llama3" and not self.rope_high_freq_factor > self.rope_low_freq_factor:
      raise ValueError(
          f"rope_high_freq_factor={self.rope_high_freq_factor} must exceed "
          f"rope_low_freq_factor={self.rope_low_freq_factor} (llama3 rope scaling)."
      )
    self._check_layer_options()
    self.block()  # validates heads, activation, norm

  def _check_layer_options(self):
    object.__setattr__(self, "layer_types", tuple(self.layer_types))  # a config's list
    if self.layer_types:
      common.check_layer_types(self.layer_types, self.num_layers, self.sliding_window)
    for name in ("attention_softcap", "final_logit_softcap", "attention_scale"):
      value = getattr(self, name)
      if value is not None and not value > 0:
        raise ValueError(f"{name}={value} must be > 0 (or None: off).")
    if self.attention_softcap is not None and self.attention_impl in ("cudnn", "chunked"):
      raise ValueError(
          f"attention_softcap={self.attention_softcap} needs the logits, which "
          f"attention_impl={self.attention_impl!r} never forms; use attention_impl='xla' or "
          "None, or attention_softcap=None."
      )

  def rope(self) -> RopeScaling | None:
    """The RoPE frequency scaling of this config (None when there is none)."""
    if self.rope_scaling == "none":
      return None
    return RopeScaling(
        kind=self.rope_scaling, factor=self.rope_factor,
        low_freq_factor=self.rope_low_freq_factor, high_freq_factor=self.rope_high_freq_factor,
        original_max_len=self.rope_original_max_len,
    )

  def layer_inputs(self) -> LayerInputs | None:
    """Each layer's window and RoPE frequencies as ``[L, ...]`` arrays (None: layers alike)."""
    if not self.layer_types:
      return None
    local = np.array([kind == "local" for kind in self.layer_types])
    window = np.where(local, self.sliding_window or GLOBAL_WINDOW, GLOBAL_WINDOW)
    inv_freq = None
    if self.position == "rope":
      h = self.head_dim or self.d_model // self.num_heads
      glob = rope_frequencies(h, self.rope_base, self.rope())
      loc = glob if self.local_rope_base is None else rope_frequencies(h, self.local_rope_base)
      inv_freq = jnp.where(local[:, None], loc, glob)
    return LayerInputs(window=jnp.asarray(window, jnp.int32), rope_inv_freq=inv_freq)

  def block(self):
    return common.block_config(
        self,
        norm_position="pre",
        # Per-layer windows come from layer_inputs() when layer_types is set.
        sliding_window=None if self.layer_types else self.sliding_window,
        use_rope=self.position == "rope",
        rope_scaling=self.rope(),
        residual_init_scale=(2 * self.num_layers) ** -0.5 if self.scale_residual_init else 1.0,
    )


def validate(config: GPTConfig, inputs: Mapping[str, Any]) -> None:
  """Check the arguments of a :class:`GPT` call before any computation.

  Token ids are range-checked where their values are concrete; under ``jit`` only shapes are.

  Args:
    config: the model's config.
    inputs: the call's arguments by name: ``input_ids`` and, optionally, ``positions``,
      ``attention_mask`` and ``decode``; other keys are ignored.

  Raises:
    ValueError: naming the argument and the numbers that disagree.
  """
  ids = inputs["input_ids"]
  common.check_token_ids("input_ids", ids, config.vocab_size)
  b, length = ids.shape
  positions = inputs.get("positions")
  if positions is not None and jnp.shape(positions) != (b, length):
    raise ValueError(f"positions must be [B, L] = {(b, length)}; got {jnp.shape(positions)}.")
  # A decoding call's length is a chunk of the cache; the cache length is not checked here.
  if not inputs.get("decode", False) and config.position == "learned":
    common.check_length("input_ids", length, config.max_len)
  if inputs.get("attention_mask") is not None:
    common.check_rank("attention_mask", inputs["attention_mask"], 2, "[batch, key_length] bool")


class GPT(nn.Module):
  """Decoder-only language model; ``__call__`` returns float32 logits ``[B, L, V]``."""

  config: GPTConfig

  @nn.compact
  def __call__(
      self,
      input_ids: Array,
      *,
      positions: Array | None = None,
      segment_ids: Array | None = None,
      attention_mask: Array | None = None,
      deterministic: bool = True,
      decode: bool = False,
      return_projection: bool = False,
  ) -> Array | Projection:
    """Next-token logits.

    Args:
      input_ids: ``[B, L]`` int token ids.
      positions: ``[B, L]`` positions (restart per segment for packed rows); default
        ``arange(L)``, continued from the cache index when decoding.
      segment_ids: ``[B, L]`` packed-sequence ids; tokens attend only within their segment.
      attention_mask: ``[B, S]`` bool, True for real tokens (S = L, or the cache length when
        decoding): keys at False positions are never attended to (left-padded prompts).
      deterministic: disables dropout.
      decode: autoregressive decoding with the KV cache (``mutable=["cache"]``).
      return_projection: return the output head's :class:`Projection` (final hidden states
        and the head's weight) instead of the logits, for a fused loss.

    Returns:
      ``[B, L, V]`` float32 logits, or the head's :class:`Projection`.
    """
    cfg = self.config
    validate(cfg, dict(
        input_ids=input_ids, positions=positions, attention_mask=attention_mask, decode=decode
    ))
    b, length = input_ids.shape
    start = common.decode_start(self, length, decode)
    if positions is None:
      positions = jnp.broadcast_to(start + jnp.arange(length)[None], (b, length))

    mask = None
    if not decode:  # when decoding, attention builds the causal mask over its cache
      mask = masks.causal_mask(length)
      if segment_ids is not None:
        mask = masks.combine_masks(mask, masks.segment_mask(segment_ids))
    if attention_mask is not None:
      mask = masks.combine_masks(mask, attention_mask[:, None, None, :].astype(bool))

    wte = common.TokenEmbedding(
        cfg.vocab_size, cfg.d_model, cfg.init_std, cfg.dtype, cfg.param_dtype, name="wte"
    )
    x = wte(input_ids)
    if cfg.scale_embeddings:  # sqrt(D) rounded to the compute dtype first, as Gemma does
      x = x * jnp.asarray(cfg.d_model**0.5, cfg.dtype)
    if cfg.position == "learned":
      x = x + LearnedPositionEmbedding(
          cfg.max_len, cfg.d_model, cfg.dtype, cfg.param_dtype,
          nn.initializers.normal(stddev=0.01), name="wpe",
      )(positions)
    elif cfg.position == "sinusoidal":
      x = x + sinusoid_at(positions, cfg.d_model).astype(cfg.dtype)
    x = Dropout(cfg.dropout_rate)(x, deterministic=deterministic)
    x = common.layer_stack(cfg, DecoderBlock, cfg.num_layers, "decoder")(
        x, BlockInputs(mask=mask, positions=positions), deterministic=deterministic,
        decode=decode, per_layer=cfg.layer_inputs(),
    )
    return _output(cfg, wte, make_norm(cfg.block(), "ln_f")(x), return_projection)


def _output(cfg: GPTConfig, wte, x: Array, return_projection: bool) -> Array | Projection:
  """The output head on the final hidden states (called from :class:`GPT`'s compact call).

  A soft-capped output (Gemma 2) is not a plain projection: a loss gets the capped logits.
  """
  if cfg.tie_embeddings:
    head, projection = wte.attend, wte.projection
  else:
    head = common.LMHead(
        cfg.vocab_size, cfg.d_model, nn.initializers.normal(stddev=cfg.init_std), cfg.dtype,
        cfg.param_dtype, name="lm_head",
    )
    projection = head.projection
  if return_projection and cfg.final_logit_softcap is None:
    return projection(x)
  logits = head(x)
  if cfg.final_logit_softcap is not None:
    cap = cfg.final_logit_softcap
    logits = cap * jnp.tanh(logits / cap)
  return logits


def dummy_inputs(config: GPTConfig, batch_size: int = 1, length: int = 1):
  """``(args, kwargs)`` for ``GPT(config).init`` (shapes only matter)."""
  return (jnp.zeros((batch_size, length), jnp.int32),), {}


def train_flops(config: GPTConfig, params, shapes) -> dict[str, float]:
  """Training FLOPs of a step on ``input_ids`` of ``shapes["input_ids"] = (B, L)``."""
  b, length = shapes["input_ids"]
  heads_width = config.num_heads * (config.head_dim or config.d_model // config.num_heads)
  n = common.count(params) - common.count(params.get("wpe", {}))  # position lookups: no matmul
  return common.train_flops(
      [(n, b * length)], [(config.num_layers, heads_width, b * length, length, True)]
  )


def init_cache(model: GPT, batch_size: int, num_slots: int) -> Any:
  """An empty KV cache of ``num_slots`` positions for ``batch_size`` rows, from shapes only."""
  ids = jnp.zeros((batch_size, num_slots), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, decode=True))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def apply_cached(model: GPT, params, cache, tokens_BxL, positions_BxL, valid_BxS):
  """``(logits [B, L, V], cache)`` of ``L`` new tokens run through the cache (see
  :class:`zoo.registry.CausalLM`)."""
  logits, mutated = model.apply(
      {"params": params, "cache": cache},
      tokens_BxL,
      positions=positions_BxL,
      attention_mask=valid_BxS,
      decode=True,
      mutable=["cache"],
  )
  return logits, mutated["cache"]


def context_length(config: GPTConfig) -> int | None:
  """The learned position table's size; None for RoPE and sinusoids (no table to run past)."""
  return config.max_len if config.position == "learned" else None


registry.register(registry.Family(
    name="gpt",
    config_cls=GPTConfig,
    model_cls=GPT,
    dummy_inputs=dummy_inputs,
    train_flops=train_flops,
    tasks=("lm",),
    converters=("zoo.pretrained.gpt2", "zoo.pretrained.llama", "zoo.pretrained.phi3",
                "zoo.pretrained.gemma"),
    validate=validate,
    causal_lm=registry.CausalLM(
        init_cache=init_cache,
        apply_cached=apply_cached,
        context_length=context_length,
        vocab_size=lambda config: config.vocab_size,
        # Prompts stay within the context the model was built for, whatever its positions.
        prompt_limit=lambda config: config.max_len,
    ),
))
