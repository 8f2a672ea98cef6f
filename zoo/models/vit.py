"""ViT: the Vision Transformer of Dosovitskiy et al. 2021 ("An Image is Worth 16x16 Words").

What is different from the text families: the image is cut into non-overlapping
``patch x patch`` squares, each linearly embedded (a convolution with stride = kernel = patch),
a learned class token is prepended, position embeddings are added, and a pre-LN encoder stack
(``zoo.layers.blocks.EncoderBlock``, no mask) is followed by a final LayerNorm and a linear
head on the class token (or on the mean of the patch tokens).

DeiT (Touvron et al. 2021, "Training data-efficient image transformers & distillation
through attention") is a configuration: ``distillation_token`` adds a second learned token
after [CLS], and ``distillation_head`` a second head on it whose logits are averaged with the
[CLS] head's (``DeiTForImageClassificationWithTeacher``); both logits are sown in
``intermediates`` (``cls_logits``, ``distillation_logits``).

Any resolution divisible by the patch size runs with the same parameters: the learned
position table (sized for ``config.image_size``) is resized bicubically to the new patch grid
at call time; the rows of the prefix tokens are kept as is. ``position="sincos2d"`` has no
table at all.

Shapes: B batch, H/W image height/width, C channels, P patch size, h/w patch grid
(H/P, W/P), L tokens (h*w + the prefix tokens: [CLS], DeiT's distillation token), D width,
F mlp width, K classes.

Parameter tree (looped layers; ``scan_layers=True`` stacks ``encoder/layers_i`` into
``encoder/layers`` with a leading ``[num_layers]`` axis, see ``zoo.layers.stack``), with the
Hugging Face ``ViTForImageClassification`` checkpoint key (HF) and the original vit_jax npz
key (npz; ``E`` = ``Transformer/encoderblock_i``) of each tensor::

  embedding/kernel [P, P, C, D]    HF vit.embeddings.patch_embeddings.projection.weight
                                   [D, C, P, P] (transpose 2, 3, 1, 0); npz embedding/kernel
  embedding/bias [D]               HF ...projection.bias; npz embedding/bias
  cls [1, 1, D]                    HF vit.embeddings.cls_token; npz cls  (class_token only)
  dist_token [1, 1, D]             HF deit.embeddings.distillation_token (distillation_token)
  pos_embedding [1, L, D]          HF vit.embeddings.position_embeddings; npz
                                   Transformer/posembed_input/pos_embedding (learned only;
                                   the first rows belong to the prefix tokens)
  encoder/layers_i/
    attn_norm/{scale,bias}         HF vit.encoder.layer.i.layernorm_before; npz E/LayerNorm_0
    attn/{query,key,value}/kernel [D, N, H], bias [N, H]
                                   HF ...attention.attention.{query,key,value} ([N*H, D]:
                                   transpose, reshape); npz E/MultiHeadDotProductAttention_1/...
                                   (same shapes)
    attn/out/kernel [N, H, D], bias [D]
                                   HF ...attention.output.dense;
                                   npz E/MultiHeadDotProductAttention_1/out
    mlp_norm/{scale,bias}          HF ...layernorm_after; npz E/LayerNorm_2
    mlp/wi/kernel [D, F], bias [F] HF ...intermediate.dense; npz E/MlpBlock_3/Dense_0
    mlp/wo/kernel [F, D], bias [D] HF ...output.dense; npz E/MlpBlock_3/Dense_1
  encoder_norm/{scale,bias}        HF vit.layernorm; npz Transformer/encoder_norm
  pre_logits/{kernel,bias} [D, R]  no HF equivalent; npz pre_logits  (representation_size only)
  head/{kernel,bias} [D or R, K]   HF classifier (DeiT teacher model: cls_classifier); npz head
  head_dist/{kernel,bias} [D, K]   HF distillation_classifier  (distillation_head only)

transformers 5.x renames the HF tensors in memory (``vit.layers.i.attention.{q,k,v,o}_proj``,
``vit.layers.i.mlp.fc{1,2}``); checkpoint files keep the names above. Newer big_vision
checkpoints number the block modules ``LayerNorm_0, MultiHeadDotProductAttention_0,
LayerNorm_1, MlpBlock_0`` and store ``pos_embedding`` [1, h*w, D] at the top level without a
class-token row (their class token gets no position): prepend a zero row to load them here.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import linen as nn

from zoo import registry
from zoo import sharding as sh
from zoo.layers import attention as attn
from zoo.layers.blocks import Activation, BlockInputs, EncoderBlock, make_norm
from zoo.layers.dense import Einsum
from zoo.layers.dropout import Dropout
from zoo.layers.positional import interpolate_table, sincos_2d
from zoo.layers.stack import RematPolicy
from zoo.models import common

Array = jax.Array
ViTPool = Literal["cls", "mean"]
ViTPosition = Literal["learned", "sincos2d"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ViTConfig:
  """A Vision Transformer image classifier (defaults: ViT-B/16 at 224 px, 1000 classes)."""

  image_size: int = 224  # native (square) resolution: sizes the learned position table
  patch_size: int = 16  # P: side of the square patches (and the stem conv's stride)
  num_channels: int = 3  # C of the input images
  d_model: int = 768
  num_heads: int = 12
  num_layers: int = 12
  mlp_dim: int = 3072
  num_classes: int = 1000  # K; 0 = no head: __call__ returns the pooled features [B, D or R]
  pool: ViTPool = "cls"  # "cls": the class token's output; "mean": mean of the patch tokens
  position: ViTPosition = "learned"  # or "sincos2d": fixed, zoo.layers.positional.sincos_2d
  class_token: bool = True  # prepend a learned [CLS] token (needed by pool="cls")
  distillation_token: bool = False  # DeiT: a learned token after [CLS] (needs class_token)
  distillation_head: bool = False  # DeiT: a head on it too; logits = mean of the two heads
  representation_size: int | None = None  # R: pre-logits dense + tanh (original checkpoints)
  head_zero_init: bool = True  # zero head kernel, as vit_jax / big_vision (logits 0 at init)
  activation: Activation = "gelu"  # the exact erf form
  norm_eps: float = 1e-6  # vit_jax / big_vision; Hugging Face ViT uses 1e-12
  dropout_rate: float = 0.0  # after the position embeddings, in the MLP and on residuals
  attention_dropout_rate: float = 0.0
  init_std: float | None = 0.02  # normal(init_std) block kernels; None = Xavier (vit_jax)
  attention_impl: attn.Implementation | None = None
  scan_layers: bool = False  # nn.scan over layers (fast compile for deep models)
  remat_policy: RematPolicy = "none"
  dtype: Any = jnp.float32  # compute dtype
  param_dtype: Any = jnp.float32  # storage dtype

  def __post_init__(self):
    common.check_fields(self)  # types and ranges of every field, from the annotations
    for name in ("image_size", "patch_size", "num_channels"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name} must be positive; got {getattr(self, name)}.")
    if self.image_size % self.patch_size:
      raise ValueError(
          f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}; "
          f"use a multiple of {self.patch_size} (e.g. "
          f"{self.image_size // self.patch_size * self.patch_size or self.patch_size})."
      )
    if self.d_model % self.num_heads:
      raise ValueError(
          f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
          "change one of them."
      )
    if self.pool not in typing.get_args(ViTPool):
      raise ValueError(f"pool must be one of {typing.get_args(ViTPool)}; got {self.pool!r}.")
    if self.pool == "cls" and not self.class_token:
      raise ValueError("pool='cls' needs class_token=True; use pool='mean' without a class token.")
    self._check_distillation()
    if self.position not in typing.get_args(ViTPosition):
      raise ValueError(
          f"position must be one of {typing.get_args(ViTPosition)}; got {self.position!r}."
      )
    if self.position == "sincos2d" and self.d_model % 4:
      raise ValueError(f"position='sincos2d' needs d_model divisible by 4; got {self.d_model}.")
    if self.num_classes < 0:
      raise ValueError(f"num_classes must be >= 0 (0 = no head); got {self.num_classes}.")
    if self.representation_size is not None and self.representation_size <= 0:
      raise ValueError(
          f"representation_size must be positive or None; got {self.representation_size}."
      )
    common.check_stack_options(self.scan_layers, self.remat_policy)
    self.block()  # validates activation and the rest of the block fields

  def _check_distillation(self):
    if self.distillation_token and not self.class_token:
      raise ValueError("distillation_token=True needs class_token=True (DeiT puts it after [CLS]).")
    if self.distillation_head:
      problems = [f"{name}={getattr(self, name)!r}" for name, ok in (
          ("distillation_token", self.distillation_token), ("pool", self.pool == "cls"),
          ("num_classes", self.num_classes > 0),
          ("representation_size", self.representation_size is None)) if not ok]
      if problems:
        raise ValueError(
            "distillation_head=True reads the distillation token into a second classifier: it "
            "needs distillation_token=True, pool='cls', num_classes > 0 and no "
            f"representation_size; got {', '.join(problems)}."
        )

  @property
  def num_prefix_tokens(self) -> int:
    """Tokens before the patches: [CLS] and DeiT's distillation token."""
    return int(self.class_token) + int(self.distillation_token)

  @property
  def grid_size(self) -> int:
    """Patches per side at the native resolution."""
    return self.image_size // self.patch_size

  @property
  def num_tokens(self) -> int:
    """Sequence length at the native resolution (patches + prefix tokens)."""
    return self.grid_size**2 + self.num_prefix_tokens

  def block(self):
    # vit_jax's MlpBlock drops out after the activation too: mlp_dropout_rate = dropout_rate.
    return common.block_config(
        self, norm="layernorm", norm_position="pre", mlp_dropout_rate=self.dropout_rate
    )


def validate(config: ViTConfig, inputs: Mapping[str, Any]) -> None:
  """Check the ``images`` of a :class:`ViT` call (shapes and dtype only: works under ``jit``).

  Args:
    config: the model's config.
    inputs: the call's arguments by name: ``images`` ``[B, H, W, C]``; other keys are ignored.

  Raises:
    ValueError: naming what is wrong with the images and how to fix it.
  """
  images = inputs["images"]
  common.check_rank("images", images, 4, "[batch, height, width, channels] float images")
  _, height, width, channels = images.shape
  if channels != config.num_channels:
    raise ValueError(
        f"images have {channels} channels (shape {tuple(images.shape)}) but the model expects "
        f"num_channels={config.num_channels}; images must be channels-last [B, H, W, C] "
        "(transpose NCHW with images.transpose(0, 2, 3, 1)) or build with a matching num_channels."
    )
  p = config.patch_size
  if height % p or width % p:
    fit = lambda n: f"{max(n // p, 1) * p} or {(n // p + 1) * p}"
    raise ValueError(
        f"image size {height}x{width} is not divisible by patch_size={p}; resize or crop to "
        f"multiples of {p} (height {fit(height)}, width {fit(width)})."
    )
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(
        f"images must be floating point; got dtype {images.dtype}. Scale and normalise pixels "
        "first (e.g. (images.astype(np.float32) / 255 - mean) / std)."
    )


class ViT(nn.Module):
  """Vision Transformer; ``__call__`` returns float32 logits ``[B, K]`` (features if K = 0)."""

  config: ViTConfig

  @nn.compact
  def __call__(self, images: Array, *, deterministic: bool = True) -> Array:
    """Classify images.

    Args:
      images: ``[B, H, W, C]`` floats with H and W multiples of ``patch_size``; sizes other
        than ``config.image_size`` interpolate the learned position embeddings.
      deterministic: disables dropout.

    Returns:
      ``[B, num_classes]`` float32 logits, or ``[B, D]`` (``[B, R]`` with
      ``representation_size``) float32 pooled features when ``num_classes == 0``.
    """
    cfg = self.config
    validate(cfg, dict(images=images))
    x_BLD = self._embed(images, deterministic)
    x_BLD = common.layer_stack(cfg, EncoderBlock, cfg.num_layers, "encoder")(
        x_BLD, BlockInputs(), deterministic=deterministic
    )
    x_BLD = make_norm(cfg.block(), "encoder_norm")(x_BLD)  # float32
    return self._head(x_BLD)

  def _embed(self, images: Array, deterministic: bool) -> Array:
    """``[B, H, W, C]`` images -> ``[B, L, D]`` tokens: patches (+ class token) + positions."""
    cfg = self.config
    b, d, p = images.shape[0], cfg.d_model, cfg.patch_size
    grid_h, grid_w = images.shape[1] // p, images.shape[2] // p

    x = nn.Conv(
        d,
        kernel_size=(p, p),
        strides=(p, p),
        padding="VALID",
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        kernel_init=nn.with_logical_partitioning(
            nn.initializers.lecun_normal(), (None, None, sh.PATCH, sh.EMBED)
        ),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (sh.EMBED,)),
        name="embedding",
    )(jnp.asarray(images).astype(cfg.dtype))
    x_BLD = x.reshape(b, grid_h * grid_w, d)  # row-major patch order, as the conv's output

    if cfg.position == "sincos2d":
      # Fixed and resolution-free: computed for the actual grid; the prefix tokens get none.
      x_BLD = x_BLD + sincos_2d(grid_h, grid_w, d).astype(cfg.dtype)[None]
    prefix = []
    if cfg.class_token:
      prefix.append(self._token("cls", nn.initializers.zeros, b))
    if cfg.distillation_token:  # DeiT's init: normal(0.02), like its position table
      prefix.append(self._token("dist_token", nn.initializers.normal(stddev=0.02), b))
    x_BLD = jnp.concatenate([*prefix, x_BLD], axis=1)
    if cfg.position == "learned":
      table = self.param(
          "pos_embedding",
          nn.with_logical_partitioning(
              nn.initializers.normal(stddev=0.02), (None, sh.POSITIONS, sh.EMBED)
          ),
          (1, cfg.num_tokens, d),
          cfg.param_dtype,
      )
      x_BLD = x_BLD + self._resize_positions(table, grid_h, grid_w).astype(cfg.dtype)
    return Dropout(cfg.dropout_rate)(x_BLD, deterministic=deterministic)

  def _token(self, name: str, init, batch: int) -> Array:
    """A learned ``[1, 1, D]`` token, broadcast to ``[B, 1, D]`` in the compute dtype."""
    cfg = self.config
    token = self.param(
        name, nn.with_logical_partitioning(init, (None, None, sh.EMBED)), (1, 1, cfg.d_model),
        cfg.param_dtype,
    )
    return jnp.broadcast_to(token.astype(cfg.dtype), (batch, 1, cfg.d_model))

  def _head(self, x_BLD: Array) -> Array:
    """Encoder output ``[B, L, D]`` -> pooled, (pre-logits,) float32 logits ``[B, K]``."""
    cfg = self.config
    d = cfg.d_model
    if cfg.pool == "cls":
      x_BD = x_BLD[:, 0]
    else:
      x_BD = jnp.mean(x_BLD[:, cfg.num_prefix_tokens:], axis=1)
    if cfg.representation_size is not None:
      pre_logits = Einsum(
          (d, cfg.representation_size),
          (sh.EMBED, sh.MLP),
          dtype=cfg.dtype,
          param_dtype=cfg.param_dtype,
          kernel_init=nn.initializers.lecun_normal(),
          name="pre_logits",
      )
      x_BD = jnp.tanh(pre_logits("BD,DR->BR", x_BD))
    if cfg.num_classes == 0:
      return x_BD.astype(jnp.float32)
    logits_BK = self._classifier("head", x_BD)
    if not cfg.distillation_head:
      return logits_BK
    # DeiT's inference output: the mean of the [CLS] and distillation heads (both sown).
    dist_BK = self._classifier("head_dist", x_BLD[:, 1])
    self.sow("intermediates", "cls_logits", logits_BK)
    self.sow("intermediates", "distillation_logits", dist_BK)
    return (logits_BK + dist_BK) / 2

  def _classifier(self, name: str, x_BD: Array) -> Array:
    """A linear head ``[B, D or R] -> [B, K]`` float32 logits."""
    cfg = self.config
    # The head is tiny ([B, D] x [D, K]): run it in float32 so logits never round to bf16.
    head = Einsum(
        (x_BD.shape[-1], cfg.num_classes),
        (sh.EMBED if cfg.representation_size is None else sh.MLP, sh.CLASSES),
        dtype=jnp.float32,
        param_dtype=cfg.param_dtype,
        kernel_init=(
            nn.initializers.zeros if cfg.head_zero_init else nn.initializers.normal(stddev=0.02)
        ),
        name=name,
    )
    return head("BD,DK->BK", x_BD)

  def _resize_positions(self, table: Array, grid_h: int, grid_w: int) -> Array:
    """``[1, L0, D]`` native table -> ``[1, L, D]`` for a ``grid_h x grid_w`` patch grid."""
    cfg = self.config
    g = cfg.grid_size
    if (grid_h, grid_w) == (g, g):
      return table
    n_cls = cfg.num_prefix_tokens
    patches = interpolate_table(
        table[0, n_cls:].astype(jnp.float32), (g, g), (grid_h, grid_w)
    ).astype(table.dtype)
    return jnp.concatenate([table[:, :n_cls], patches[None]], axis=1)


def dummy_inputs(config: ViTConfig, batch_size: int = 1, length: int = 1):
  """``(args, kwargs)`` for ``ViT(config).init``: zero images at ``config.image_size``.

  ``length`` is accepted for the common family signature and ignored.
  """
  del length
  shape = (batch_size, config.image_size, config.image_size, config.num_channels)
  return (jnp.zeros(shape, jnp.float32),), {}


def num_params_formula(config: ViTConfig) -> int:
  """Parameter count from the architecture alone (a cross-check of ``zoo.param_count``)."""
  d, f, p, c = config.d_model, config.mlp_dim, config.patch_size, config.num_channels
  block = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d
  total = p * p * c * d + d + config.num_layers * block + 2 * d
  total += d * config.num_prefix_tokens
  total += config.num_tokens * d * int(config.position == "learned")
  width = d
  if config.representation_size is not None:
    total += d * config.representation_size + config.representation_size
    width = config.representation_size
  if config.num_classes:
    heads = 1 + int(config.distillation_head)
    total += heads * (width * config.num_classes + config.num_classes)
  return int(total)


def train_flops(config: ViTConfig, params, shapes) -> dict[str, float]:
  """Training FLOPs of a step on ``images`` of ``shapes["images"] = (B, H, W, C)``."""
  b, h, w = shapes["images"][:3]
  tokens = (h // config.patch_size) * (w // config.patch_size) + config.num_prefix_tokens
  per_row = sum(common.count(params.get(k, {})) for k in ("head", "head_dist", "pre_logits"))
  lookups = sum(common.count(params.get(k, {})) for k in ("pos_embedding", "cls", "dist_token"))
  n = common.count(params) - per_row - lookups
  return common.train_flops(
      [(n, b * tokens), (per_row, b)],
      [(config.num_layers, config.d_model, b * tokens, tokens, False)],
  )


registry.register(registry.Family(
    name="vit",
    config_cls=ViTConfig,
    model_cls=ViT,
    dummy_inputs=dummy_inputs,
    train_flops=train_flops,
    tasks=("image_classification",),
    converters=("zoo.pretrained.vit", "zoo.pretrained.deit"),
    validate=validate,
    inputs="images",
))
