"""Feed-forward, norms, and the encoder/decoder blocks all four families are built from.

Shapes: B batch, T target length, S source length, D model width, F mlp width.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.ad_checkpoint import checkpoint_name

from zoo import sharding as sh
from zoo.layers.attention import Implementation, MultiHeadAttention

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
  dropout_rate: float = 0.0  # on each sublayer output before the residual add
  attention_dropout_rate: float = 0.0  # on the attention weights
  mlp_dropout_rate: float = 0.0  # on the feed-forward hidden activations
  use_rope: bool = False  # rotary positions in self-attention
  rope_base: float = 10000.0
  attention_impl: Implementation | None = None  # None = best for device and dtype
  init_std: float | None = 0.02  # normal(init_std) kernels; None = Xavier-uniform (2017 paper)
  residual_init_scale: float = 1.0  # multiplies init_std of projections into the residual
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
    _choice("norm", self.norm, ("layernorm", "rmsnorm"))
    _choice("norm_position", self.norm_position, ("pre", "post"))

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.d_model // self.num_heads

  def kernel_init(self, scale: float = 1.0):
    if self.init_std is None:
      return nn.initializers.xavier_uniform()
    return nn.initializers.normal(stddev=self.init_std * scale)


def make_norm(config: BlockConfig, name: str) -> nn.Module:
  """LayerNorm or RMSNorm with statistics in float32 and unsharded parameters."""
  ones = nn.with_logical_partitioning(nn.initializers.ones, (sh.NORM,))
  if config.norm == "rmsnorm":
    return nn.RMSNorm(
        epsilon=config.norm_eps,
        dtype=jnp.float32,
        param_dtype=config.param_dtype,
        scale_init=ones,
        name=name,
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


def dense(
    features: int, axes: tuple[str, str], config: BlockConfig, name: str, init_scale: float = 1.0
) -> nn.Dense:
  """``nn.Dense`` with logical axis names on kernel and bias."""
  return nn.Dense(
      features,
      use_bias=config.use_bias,
      dtype=config.dtype,
      param_dtype=config.param_dtype,
      kernel_init=nn.with_logical_partitioning(config.kernel_init(init_scale), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axes[1],)),
      name=name,
  )


class MLP(nn.Module):
  """Position-wise feed-forward: ``wo(dropout(act(wi(x))))``, ``[B, L, D] -> [B, L, D]``."""

  config: BlockConfig

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    cfg = self.config
    h = dense(cfg.mlp_dim, (sh.EMBED, sh.MLP), cfg, "wi")(x)
    h = ACTIVATIONS[cfg.activation](h)
    h = nn.with_logical_constraint(h, (sh.ACT_BATCH, sh.ACT_LENGTH, sh.ACT_MLP))
    h = checkpoint_name(h, "mlp_hidden")
    h = nn.Dropout(cfg.mlp_dropout_rate)(h, deterministic=deterministic)
    return dense(x.shape[-1], (sh.MLP, sh.EMBED), cfg, "wo", cfg.residual_init_scale)(h)


def _attention(config: BlockConfig, name: str, use_rope: bool) -> MultiHeadAttention:
  return MultiHeadAttention(
      num_heads=config.num_heads,
      head_dim=config.dim_per_head,
      num_kv_heads=config.num_kv_heads,
      use_bias=config.use_bias,
      dropout_rate=config.attention_dropout_rate,
      use_rope=use_rope,
      rope_base=config.rope_base,
      implementation=config.attention_impl,
      dtype=config.dtype,
      param_dtype=config.param_dtype,
      kernel_init=config.kernel_init(),
      out_kernel_init=config.kernel_init(config.residual_init_scale),
      name=name,
  )


class _Sublayer:
  """Pre-LN ``x + f(norm(x))`` or post-LN ``norm(x + f(x))`` with residual dropout."""

  def __init__(self, module: nn.Module, config: BlockConfig, norm_name: str):
    self.module, self.config, self.norm_name = module, config, norm_name

  def __call__(self, x: Array, f, deterministic: bool) -> Array:
    cfg = self.config
    norm = make_norm(cfg, self.norm_name)
    inp = norm(x).astype(cfg.dtype) if cfg.norm_position == "pre" else x
    y = nn.Dropout(cfg.dropout_rate)(f(inp), deterministic=deterministic)
    out = x + y
    if cfg.norm_position == "post":
      out = norm(out).astype(cfg.dtype)
    return out


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
      mask: Array | None = None,
      positions: Array | None = None,
      deterministic: bool = True,
  ):
    """``x`` ``[B, L, D]``; ``mask`` broadcastable to ``[B, N, L, L]``."""
    cfg = self.config
    x = _constrain(x)
    attn = _attention(cfg, "attn", cfg.use_rope)
    x = _Sublayer(attn, cfg, "attn_norm")(
        x,
        lambda h: checkpoint_name(
            attn(h, mask=mask, positions=positions, deterministic=deterministic), "attn_out"
        ),
        deterministic,
    )
    mlp = MLP(cfg, name="mlp")
    x = _Sublayer(mlp, cfg, "mlp_norm")(
        x, lambda h: checkpoint_name(mlp(h, deterministic), "mlp_out"), deterministic
    )
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
      encoded: Array | None = None,
      self_mask: Array | None = None,
      cross_mask: Array | None = None,
      positions: Array | None = None,
      deterministic: bool = True,
      decode: bool = False,
  ):
    """``x`` ``[B, T, D]``, ``encoded`` ``[B, S, D]``; masks ``[B, N, T, T]`` / ``[B, N, T, S]``."""
    cfg = self.config
    if self.cross_attention and encoded is None:
      raise ValueError("this DecoderBlock has cross-attention: pass the encoder output.")
    x = _constrain(x)
    attn = _attention(cfg, "attn", cfg.use_rope)
    x = _Sublayer(attn, cfg, "attn_norm")(
        x,
        lambda h: checkpoint_name(
            attn(
                h,
                mask=self_mask,
                positions=positions,
                deterministic=deterministic,
                decode=decode,
            ),
            "attn_out",
        ),
        deterministic,
    )
    if self.cross_attention:
      cross = _attention(cfg, "cross_attn", use_rope=False)
      x = _Sublayer(cross, cfg, "cross_norm")(
          x,
          lambda h: checkpoint_name(
              cross(h, encoded, mask=cross_mask, deterministic=deterministic), "cross_out"
          ),
          deterministic,
      )
    mlp = MLP(cfg, name="mlp")
    x = _Sublayer(mlp, cfg, "mlp_norm")(
        x, lambda h: checkpoint_name(mlp(h, deterministic), "mlp_out"), deterministic
    )
    x = _constrain(x)
    return (x, None) if self.scanned else x
