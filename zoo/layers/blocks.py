"""Feed-forward, norms, and the encoder/decoder blocks all four families are built from.

Shapes: B batch, T target length, S source length, D model width, F mlp width.

Every block is called as ``block(x, inputs, deterministic, decode)``: the residual stream
``x`` ``[B, T, D]``, a :class:`BlockInputs` record of the arrays every layer shares (masks,
attention biases, positions, encoder output) and two Python flags.
:class:`zoo.layers.stack.Stack` relies on that order: the record is broadcast to every layer and
the flags stay static under remat.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct
from jax.ad_checkpoint import checkpoint_name

from zoo import sharding as sh
from zoo.layers.attention import Implementation, MultiHeadAttention
from zoo.layers.dense import Einsum
from zoo.layers.dropout import Dropout
from zoo.layers.norms import LayerNorm, RMSNorm
from zoo.layers.positional import RopeScaling

Array = jax.Array
Activation = Literal["gelu", "gelu_tanh", "relu", "silu"]
NormKind = Literal["layernorm", "rmsnorm"]
NormPosition = Literal["pre", "post"]

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # BERT, ViT: the erf form
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # GPT-2 "gelu_new"
    "relu": jax.nn.relu,  # the 2017 Transformer
    "silu": jax.nn.silu,  # Marian "swish"
}


def _choice(name: str, value: Any, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"{name} must be one of {tuple(allowed)}; got {value!r}.")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockConfig:
  """What one Transformer block needs; families build it from their own configs."""

  d_model: int  # residual stream width D
  num_heads: int  # query heads N
  mlp_dim: int  # feed-forward hidden width F
  head_dim: int | None = None  # H; None = d_model // num_heads
  num_kv_heads: int | None = None  # K; None = num_heads, 1 = multi-query
  activation: Activation = "gelu"
  norm: NormKind = "layernorm"
  norm_eps: float = 1e-6
  norm_position: NormPosition = "pre"  # "post" is the 2017 paper and BERT
  use_bias: bool = True  # biases on every projection
  qkv_bias: bool | None = None  # biases on query/key/value only (Qwen2); None = use_bias
  gated_mlp: bool = False  # SwiGLU-style: wo(act(gate(x)) * wi(x)) (Llama, Mistral, Qwen2)
  dropout_rate: float = 0.0  # on each sublayer output before the residual add
  attention_dropout_rate: float = 0.0  # on the attention weights
  mlp_dropout_rate: float = 0.0  # on the feed-forward hidden activations
  use_rope: bool = False  # rotary positions in self-attention
  rope_base: float = 10000.0
  rope_scaling: RopeScaling | None = None  # long-context frequency scaling (Llama 3)
  sliding_window: int | None = None  # self-attention over the last W slots (Mistral)
  attention_impl: Implementation | None = None  # None = best for device and dtype
  attention_scale: float | None = None  # attention logits scale; None = 1/sqrt(head_dim) (T5: 1)
  init_std: float | None = 0.02  # normal(init_std) kernels; None = Xavier-uniform (2017 paper)
  residual_init_scale: float = 1.0  # multiplies init_std of projections into the residual
  query_init_scale: float = 1.0  # multiplies init_std of the query kernel (T5: head_dim**-0.5)
  norm_scale_offset: float = 0.0  # RMSNorm multiplies by offset + scale (Gemma: 1, zero init)
  qk_norm: bool = False  # RMSNorm on each query / key head before RoPE (Qwen3, Gemma 3)
  sublayer_post_norm: bool = False  # a norm on each sublayer's output too (Gemma 2 / 3)
  attention_softcap: float | None = None  # cap * tanh(logits / cap) in attention (Gemma 2)
  dtype: Any = jnp.float32  # compute dtype
  param_dtype: Any = jnp.float32  # storage dtype

  def __post_init__(self):
    if self.d_model <= 0 or self.num_heads <= 0 or self.mlp_dim <= 0:
      raise ValueError(
          f"d_model, num_heads and mlp_dim must be positive; got {self.d_model}, "
          f"{self.num_heads}, {self.mlp_dim}."
      )
    if self.head_dim is None and self.d_model % self.num_heads:
      raise ValueError(
          f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
          "change one of them or set head_dim explicitly."
      )
    kv = self.num_kv_heads or self.num_heads
    if self.num_heads % kv:
      raise ValueError(f"num_heads={self.num_heads} must be a multiple of num_kv_heads={kv}.")
    _choice("activation", self.activation, ACTIVATIONS)
    _choice("norm", self.norm, typing.get_args(NormKind))
    _choice("norm_position", self.norm_position, typing.get_args(NormPosition))
    if self.norm_scale_offset and self.norm != "rmsnorm":
      raise ValueError(
          f"norm_scale_offset={self.norm_scale_offset} is an RMSNorm option (Gemma); got "
          f"norm={self.norm!r}. Use norm='rmsnorm' or norm_scale_offset=0."
      )

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  def kernel_init(self, scale: float = 1.0):
    if self.init_std is None:
      return nn.initializers.xavier_uniform()
    return nn.initializers.normal(stddev=self.init_std * scale)


def make_norm(config: BlockConfig, name: str) -> nn.Module:
  """LayerNorm or RMSNorm with statistics in float32 and unsharded parameters.

  Pre-LN models (GPT, ViT, Llama-style) get the hand-written backward of
  :mod:`zoo.layers.norms` (no transposed copies in the gradient on CPU). Post-LN models (BERT,
  the 2017 Transformer) keep flax's, where autodiff fuses better; the A/B that chose this is in
  BENCHMARKS.md. Same parameters either way.
  """
  if config.norm_scale_offset or (config.norm_position == "pre" and config.norm == "rmsnorm"):
    return RMSNorm(epsilon=config.norm_eps, param_dtype=config.param_dtype,
                   scale_offset=config.norm_scale_offset, name=name)
  if config.norm_position == "pre":
    return LayerNorm(epsilon=config.norm_eps, param_dtype=config.param_dtype, name=name)
  ones = nn.with_logical_partitioning(nn.initializers.ones, (sh.NORM,))
  if config.norm == "rmsnorm":
    return nn.RMSNorm(
        epsilon=config.norm_eps, dtype=jnp.float32, param_dtype=config.param_dtype,
        scale_init=ones, name=name,
    )
  return nn.LayerNorm(
      epsilon=config.norm_eps,
      dtype=jnp.float32,
      param_dtype=config.param_dtype,
      use_fast_variance=False,  # two-pass variance: matches PyTorch to float32 rounding
      scale_init=ones,
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (sh.NORM,)),
      name=name,
  )


def _dense(
    shape: tuple[int, int],
    axes: tuple[str, str],
    config: BlockConfig,
    name: str,
    init_scale: float = 1.0,
) -> Einsum:
  return Einsum(
      shape,
      axes,
      use_bias=config.use_bias,
      dtype=config.dtype,
      param_dtype=config.param_dtype,
      kernel_init=config.kernel_init(init_scale),
      name=name,
  )


class MLP(nn.Module):
  """Position-wise feed-forward: ``wo(dropout(act(wi(x))))``, ``[B, L, D] -> [B, L, D]``.

  With ``gated_mlp`` a second input projection ``gate`` is activated and multiplies ``wi``'s
  output, ``wo(act(gate(x)) * wi(x))`` (Shazeer 2020; SwiGLU with ``activation="silu"``, Hugging
  Face's ``down(act(gate_proj(x)) * up_proj(x))``).
  """

  config: BlockConfig

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    cfg = self.config
    d = x.shape[-1]
    h = _dense((d, cfg.mlp_dim), (sh.EMBED, sh.MLP), cfg, "wi")("BLD,DF->BLF", x)
    if cfg.gated_mlp:
      gate = _dense((d, cfg.mlp_dim), (sh.EMBED, sh.MLP), cfg, "gate")("BLD,DF->BLF", x)
      h = ACTIVATIONS[cfg.activation](gate) * h
    else:
      h = ACTIVATIONS[cfg.activation](h)
    h = nn.with_logical_constraint(h, (sh.ACT_BATCH, sh.ACT_LENGTH, sh.ACT_MLP))
    h = checkpoint_name(h, "mlp_hidden")
    h = Dropout(cfg.mlp_dropout_rate)(h, deterministic=deterministic)
    wo = _dense((cfg.mlp_dim, d), (sh.MLP, sh.EMBED), cfg, "wo", cfg.residual_init_scale)
    return wo("BLF,FD->BLD", h)


def _attention(config: BlockConfig, name: str, use_rope: bool) -> MultiHeadAttention:
  return MultiHeadAttention(
      num_heads=config.num_heads,
      head_dim=config.dim_per_head,
      num_kv_heads=config.num_kv_heads,
      use_bias=config.use_bias,
      dropout_rate=config.attention_dropout_rate,
      use_rope=use_rope,
      rope_base=config.rope_base,
      rope_scaling=config.rope_scaling if use_rope else None,
      qkv_bias=config.qkv_bias,
      sliding_window=config.sliding_window,  # self-attention only (MultiHeadAttention)
      implementation=config.attention_impl,
      scale=config.attention_scale,
      qk_norm=config.qk_norm,
      norm_eps=config.norm_eps,
      norm_scale_offset=config.norm_scale_offset,
      logit_softcap=config.attention_softcap,
      dtype=config.dtype,
      param_dtype=config.param_dtype,
      kernel_init=config.kernel_init(),
      out_kernel_init=config.kernel_init(config.residual_init_scale),
      query_kernel_init=(
          None if config.query_init_scale == 1.0 else config.kernel_init(config.query_init_scale)
      ),
      name=name,
  )


@struct.dataclass(kw_only=True)
class BlockInputs:
  """The arrays every layer of a stack reads besides the residual stream; any may be None.

  A pytree (None fields have no leaves), so it is broadcast through ``nn.scan`` and traced
  through ``nn.remat`` as one argument: a value a family computes once at the top of its model
  (a relative-position bias from its own parameters) reaches every layer, and its gradient
  comes back summed over the layers.

  Attributes:
    mask: self-attention mask, boolean, broadcastable to ``[B, N, T, T]`` (``[B, N, T,
      max_len]`` when decoding with a cache).
    bias: additive self-attention logits bias (T5, ALiBi, BEiT relative positions),
      broadcastable to ``[B, N, T, T]``; added in float32 to the scaled logits before the mask.
      When decoding with a cache it is ``[B, N, T, max_len]``: rows for this call's T new
      tokens (cache slots ``index .. index + T - 1``, the ``positions`` of the call), columns
      for every cache slot ``0 .. max_len - 1``, written or not.
    positions: ``[B, T]`` positions for RoPE (unused by blocks without it).
    encoded: ``[B, S, D]`` encoder output read by cross-attention.
    cross_mask: cross-attention mask, broadcastable to ``[B, N, T, S]``.
    cross_bias: additive cross-attention logits bias, broadcastable to ``[B, N, T, S]``.
  """

  mask: Array | None = None
  bias: Array | None = None
  positions: Array | None = None
  encoded: Array | None = None
  cross_mask: Array | None = None
  cross_bias: Array | None = None


@struct.dataclass(kw_only=True)
class LayerInputs:
  """What differs between the layers of a stack of local and global layers (Gemma 2 / 3).

  :class:`zoo.layers.stack.Stack` gives each layer its slice of ``[L, ...]`` arrays (scanned
  under ``nn.scan``, indexed in the loop), so one block definition serves both layer kinds.

  Attributes:
    window: scalar int32 sliding window of this layer; a value above any length = global.
    rope_inv_freq: ``[H/2]`` RoPE inverse frequencies of this layer (base and scaling).
  """

  window: Array | None = None
  rope_inv_freq: Array | None = None


def _sublayer_out(cfg: BlockConfig, h: Array, name: str) -> Array:
  """A sublayer's output, normalised once more when ``sublayer_post_norm`` (Gemma 2 / 3)."""
  return make_norm(cfg, name)(h).astype(cfg.dtype) if cfg.sublayer_post_norm else h


# A sublayer ``f`` with its norm is ``x + f(norm(x))`` (pre-LN) or ``norm(x + f(x))`` (post-LN):
# the blocks write the residual add themselves, between these two.


def _pre_ln(cfg: BlockConfig, norm: nn.Module, x: Array) -> Array:
  """The sublayer's input: ``norm(x)`` when pre-LN, else ``x``."""
  return norm(x).astype(cfg.dtype) if cfg.norm_position == "pre" else x


def _post_ln(cfg: BlockConfig, norm: nn.Module, x: Array) -> Array:
  """After the residual add: ``norm(x)`` when post-LN, else ``x``."""
  return norm(x).astype(cfg.dtype) if cfg.norm_position == "post" else x


def _constrain(x: Array) -> Array:
  return nn.with_logical_constraint(x, (sh.ACT_BATCH, sh.ACT_LENGTH, sh.ACT_EMBED))


class EncoderBlock(nn.Module):
  """Self-attention -> Add & Norm -> feed-forward -> Add & Norm (or the pre-LN order).

  ``scanned=True`` makes ``__call__`` return ``(x, None)`` for ``nn.scan``.
  """

  config: BlockConfig
  scanned: bool = False

  @nn.compact
  def __call__(
      self,
      x: Array,
      inputs: BlockInputs = BlockInputs(),
      deterministic: bool = True,
      decode: bool = False,
  ):
    """The block on ``x`` ``[B, L, D]``; reads ``inputs.mask`` and ``inputs.bias`` (both
    broadcastable to ``[B, N, L, L]``) and ``inputs.positions``.

    ``decode`` is there for the common block signature; an encoder has no cache.
    """
    if decode:
      raise ValueError("an EncoderBlock has no KV cache; decode=True is for DecoderBlock.")
    cfg = self.config
    drop = lambda h: Dropout(cfg.dropout_rate)(h, deterministic=deterministic)  # noqa: E731
    x = _constrain(x)

    attn, norm = _attention(cfg, "attn", cfg.use_rope), make_norm(cfg, "attn_norm")
    h = attn(
        _pre_ln(cfg, norm, x),
        mask=inputs.mask,
        bias=inputs.bias,
        positions=inputs.positions,
        deterministic=deterministic,
    )
    x = _post_ln(cfg, norm, x + drop(checkpoint_name(h, "attn_out")))

    mlp, norm = MLP(cfg, name="mlp"), make_norm(cfg, "mlp_norm")
    h = mlp(_pre_ln(cfg, norm, x), deterministic)
    x = _post_ln(cfg, norm, x + drop(checkpoint_name(h, "mlp_out")))

    x = _constrain(x)
    return (x, None) if self.scanned else x


class DecoderBlock(nn.Module):
  """Masked self-attention, then cross-attention over an encoder output, then feed-forward.

  ``cross_attention=False`` gives the decoder-only (GPT) block. ``decode=True`` uses the
  self-attention KV cache. ``scanned=True`` returns ``(x, None)`` for ``nn.scan``.
  """

  config: BlockConfig
  cross_attention: bool = False
  scanned: bool = False

  @nn.compact
  def __call__(
      self,
      x: Array,
      inputs: BlockInputs = BlockInputs(),
      deterministic: bool = True,
      decode: bool = False,
      layer: LayerInputs | None = None,
  ):
    """The block on ``x`` ``[B, T, D]``.

    Reads ``inputs.mask`` and ``inputs.bias`` (``[B, N, T, T]``; ``[B, N, T, max_len]`` with
    ``decode``), ``inputs.positions`` and, with cross-attention, ``inputs.encoded``
    (``[B, S, D]``), ``inputs.cross_mask`` and ``inputs.cross_bias`` (``[B, N, T, S]``).
    ``layer``: this layer's own window and RoPE frequencies (:class:`LayerInputs`), if any.
    """
    layer = LayerInputs() if layer is None else layer
    cfg = self.config
    if self.cross_attention and inputs.encoded is None:
      raise ValueError("this DecoderBlock has cross-attention: pass the encoder output.")
    drop = lambda h: Dropout(cfg.dropout_rate)(h, deterministic=deterministic)  # noqa: E731
    x = _constrain(x)

    attn, norm = _attention(cfg, "attn", cfg.use_rope), make_norm(cfg, "attn_norm")
    h = attn(
        _pre_ln(cfg, norm, x),
        mask=inputs.mask,
        bias=inputs.bias,
        positions=inputs.positions,
        deterministic=deterministic,
        decode=decode,
        window=layer.window,
        rope_inv_freq=layer.rope_inv_freq,
    )
    h = _sublayer_out(cfg, h, "attn_post_norm")
    x = _post_ln(cfg, norm, x + drop(checkpoint_name(h, "attn_out")))

    if self.cross_attention:
      cross, norm = _attention(cfg, "cross_attn", use_rope=False), make_norm(cfg, "cross_norm")
      h = cross(
          _pre_ln(cfg, norm, x),
          inputs.encoded,
          mask=inputs.cross_mask,
          bias=inputs.cross_bias,
          deterministic=deterministic,
      )
      x = _post_ln(cfg, norm, x + drop(checkpoint_name(h, "cross_out")))

    mlp, norm = MLP(cfg, name="mlp"), make_norm(cfg, "mlp_norm")
    h = _sublayer_out(cfg, mlp(_pre_ln(cfg, norm, x), deterministic), "mlp_post_norm")
    x = _post_ln(cfg, norm, x + drop(checkpoint_name(h, "mlp_out")))

    x = _constrain(x)
    return (x, None) if self.scanned else x
