"""The encoder-decoder Transformer for translation (Vaswani et al. 2017,
"Attention Is All You Need").

Source and target token embeddings (one shared table by default) scaled by sqrt(d_model),
sinusoidal positions (learned or RoPE by config), N post-LN encoder blocks, N decoder blocks
with causal self-attention and cross-attention over the encoder output, and an output
projection tied to the target embedding. Pre-LN (with a final norm after each stack), a
final-logits bias, an embedding LayerNorm and the "split" sinusoid layout are config
switches, enough for Marian / BART-style checkpoints.

Shapes: B batch, S source length, T target length, D model width, V vocabulary.

Parameter tree (looped layers; ``scan_layers=True`` stacks ``layers_i`` into ``layers`` with
a leading [L] axis, see ``zoo.layers.stack.scan_params``)::

  shared/embedding                   [V, D]  when share_embeddings (HF Marian model.shared)
  encoder_embed/embedding            [Vs, D] otherwise (model.encoder.embed_tokens)
  decoder_embed/embedding            [Vt, D] otherwise (model.decoder.embed_tokens)
  encoder_positions/embedding        [max_len, D]  position="learned" only
  decoder_positions/embedding        [max_len, D]  position="learned" only
  encoder_embedding_norm/{scale,bias}, decoder_embedding_norm/...  embedding_norm only
  encoder/layers_i/attn/{query,key,value}/{kernel [D,N,H], bias [N,H]}   (self_attn.q/k/v_proj)
                   attn/out/{kernel [N,H,D], bias [D]}                     (self_attn.out_proj)
                   attn_norm/{scale,bias}                                  (self_attn_layer_norm)
                   mlp/wi/{kernel [D,F], bias [F]}, mlp/wo/{kernel [F,D], bias [D]}  (fc1, fc2)
                   mlp_norm/{scale,bias}                                   (final_layer_norm)
  decoder/layers_i/attn/..., attn_norm/...   (self_attn, self_attn_layer_norm)
                   cross_attn/..., cross_norm/...  (encoder_attn, encoder_attn_layer_norm)
                   mlp/wi, mlp/wo, mlp_norm    (fc1, fc2, final_layer_norm)
  encoder_norm/{scale,bias}, decoder_norm/...  norm_position="pre" only
  lm_head/kernel                     [D, Vt] when not tie_output (no bias)
  final_logits_bias                  [Vt]    when final_logits_bias

Sinusoidal positions have no parameters. Biases are absent when ``use_bias=False``.

Decoding: ``cache = init_cache(config, batch_size, max_decode_len)`` (or ``model.init`` with
``decode=True`` on a ``[B, max_decode_len]`` target), then ``model.apply({"params": p,
"cache": cache}, tgt_chunk, encoded, src_ids, decode=True, method="decode",
mutable=["cache"])``. The cache holds plain arrays: ``decoder/layers_i/attn/cached_key`` and
``cached_value`` ``[B, max_decode_len, K, H]`` (batch leading, so beams can be gathered),
the scalar slot counters ``decoder/layers_i/attn/cache_index`` and the scalar ``position``
counter, which makes positions continue across calls. With ``scan_layers`` the entries sit
under ``decoder/layers/attn`` with the layer axis first: ``[L, B, ...]`` and ``cache_index``
``[L]``. Cross-attention keys/values are recomputed from ``encoded`` at each call.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from zoo import registry
from zoo import sharding as sh
from zoo.layers import attention as attn
from zoo.layers.blocks import (
    Activation,
    BlockInputs,
    DecoderBlock,
    EncoderBlock,
    NormKind,
    make_norm,
)
from zoo.layers.dense import Einsum
from zoo.layers.positional import LearnedPositionEmbedding, SinusoidLayout, sinusoid_at
from zoo.layers.stack import RematPolicy
from zoo.models import common

Array = jax.Array
Position = Literal["sinusoidal", "learned", "rope"]
NormPosition = Literal["post", "pre"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig:
  """An encoder-decoder Transformer; defaults are the paper's base model."""

  vocab_size: int = 37000  # shared source/target BPE vocabulary
  src_vocab_size: int | None = None  # None = vocab_size
  tgt_vocab_size: int | None = None  # None = vocab_size
  d_model: int = 512
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  mlp_dim: int = 2048
  head_dim: int | None = None  # None = d_model // num_heads
  num_kv_heads: int | None = None  # grouped-query attention; None = num_heads
  max_len: int = 1024  # longest sequence (rows of a learned table; also enforced for sinusoids)
  pad_id: int = 0  # source padding token (masked out of attention)
  position: Position = "sinusoidal"
  sinusoid_layout: SinusoidLayout = "interleaved"  # the paper's; "split" = Marian / tensor2tensor
  position_offset: int = 0  # added to positions before the lookup (BART's learned table: 2)
  rope_base: float = 10000.0
  share_embeddings: bool = True  # one table for source and target tokens
  tie_output: bool = True  # output projection = target embedding transposed
  scale_embeddings: bool = True  # token embeddings * sqrt(d_model)
  final_logits_bias: bool = False  # a [V] bias on the logits (Marian)
  norm_position: NormPosition = "post"  # "post" is the paper; "pre" adds a final norm per stack
  embedding_norm: bool = False  # LayerNorm after embeddings + positions (BART)
  activation: Activation = "relu"
  norm: NormKind = "layernorm"
  norm_eps: float = 1e-5
  use_bias: bool = True
  dropout_rate: float = 0.1  # embeddings and every sublayer output (P_drop of the paper)
  attention_dropout_rate: float = 0.0
  mlp_dropout_rate: float = 0.0  # on the feed-forward hidden activations
  init_std: float | None = None  # None = Xavier-uniform kernels, embeddings normal(d_model**-0.5)
  attention_impl: attn.Implementation | None = None
  scan_layers: bool = False  # nn.scan over layers (fast compile for deep models)
  remat_policy: RematPolicy = "none"
  dtype: Any = jnp.float32  # compute dtype
  param_dtype: Any = jnp.float32  # storage dtype

  def __post_init__(self):
    common.check_fields(self)  # types and ranges of every field, from the annotations
    for name in ("vocab_size", "d_model", "num_encoder_layers", "num_decoder_layers", "max_len"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name} must be positive; got {getattr(self, name)}.")
    for name in ("src_vocab_size", "tgt_vocab_size"):
      if getattr(self, name) is not None and getattr(self, name) <= 0:
        raise ValueError(f"{name} must be positive or None; got {getattr(self, name)}.")
    if self.position not in typing.get_args(Position):
      raise ValueError(
          f"position must be one of {typing.get_args(Position)}; got {self.position!r}."
      )
    if self.sinusoid_layout not in typing.get_args(SinusoidLayout):
      raise ValueError(
          f"sinusoid_layout must be one of {typing.get_args(SinusoidLayout)}; got "
          f"{self.sinusoid_layout!r}."
      )
    if self.position == "sinusoidal" and self.d_model % 2:
      raise ValueError(f"sinusoidal positions need an even d_model; got {self.d_model}.")
    if self.position_offset < 0:
      raise ValueError(f"position_offset must be >= 0; got {self.position_offset}.")
    if self.share_embeddings and self.src_vocab != self.tgt_vocab:
      raise ValueError(
          f"share_embeddings=True needs equal vocabularies; got src_vocab_size={self.src_vocab} "
          f"and tgt_vocab_size={self.tgt_vocab}. Set share_embeddings=False or equal sizes."
      )
    if not 0 <= self.pad_id < min(self.src_vocab, self.tgt_vocab):
      raise ValueError(
          f"pad_id={self.pad_id} is outside the vocabularies ({self.src_vocab}, {self.tgt_vocab})."
      )
    common.check_stack_options(self.scan_layers, self.remat_policy)
    self.block()  # validates heads, activation, norm and norm_position

  @property
  def src_vocab(self) -> int:
    return self.src_vocab_size or self.vocab_size

  @property
  def tgt_vocab(self) -> int:
    return self.tgt_vocab_size or self.vocab_size

  @property
  def embed_std(self) -> float:
    # Normal(d^-1/2) rows times sqrt(d) give unit-variance inputs, and tied logits against
    # unit-variance hidden states start with unit variance (fairseq / tensor2tensor).
    return self.d_model**-0.5 if self.init_std is None else self.init_std

  def block(self):
    return common.block_config(self, use_rope=self.position == "rope")


def _check_length(config: TransformerConfig, name: str, length: int) -> None:
  if config.position != "rope" and length + config.position_offset > config.max_len:
    raise ValueError(
        f"{name} has length {length} (+ position_offset {config.position_offset}) but max_len is "
        f"{config.max_len} ({config.position} positions); truncate the input or build the model "
        "with a larger max_len."
    )


def _check_positions(
    config: TransformerConfig, name: str, positions: Array, shape: tuple[int, int]
) -> None:
  """Shape check, and a table-range check where the values are concrete."""
  if tuple(jnp.shape(positions)) != shape:
    raise ValueError(f"{name} must be [B, L] = {shape}; got {tuple(jnp.shape(positions))}.")
  if config.position != "rope" and common.is_concrete(positions) and np.size(positions):
    top = int(np.max(np.asarray(positions))) + config.position_offset
    if top >= config.max_len:
      raise ValueError(
          f"{name} reach index {top} (position_offset={config.position_offset}) but max_len is "
          f"{config.max_len}; shorten the input or build the model with a larger max_len."
      )


def _check_embeds(
    config: TransformerConfig, name: str, embeds: Array, shape: tuple[int, ...] | None
) -> None:
  common.check_rank(name, embeds, 3, "[batch, length, d_model]")
  if embeds.shape[-1] != config.d_model or (shape and embeds.shape[:2] != shape):
    raise ValueError(
        f"{name} has shape {tuple(embeds.shape)}; expected [B, L, D] with D = d_model = "
        f"{config.d_model}" + (f" and [B, L] = {shape}." if shape else ".")
    )


def validate(config: TransformerConfig, inputs: Mapping[str, Any]) -> None:
  """Check the arguments of a :class:`Transformer` call, ``encode`` or ``decode``.

  Runs before any computation. Ids and positions are range-checked where their values are
  concrete; under ``jit`` only shapes are.

  Args:
    config: the model's config.
    inputs: the arguments by name of ``__call__`` (``src_ids``, ``tgt_in_ids``), of
      ``encode`` (``src_ids``, ``src_positions``, ``src_segment_ids``, ``src_embeds``) or of
      ``decode`` (``tgt_ids`` / ``tgt_embeds``, ``encoded``, ``src_ids``, ``positions``,
      ``tgt_segment_ids``, ``src_segment_ids``, ``decode``). A mapping with ``encoded`` is
      checked as the decoder's arguments; other keys are ignored.

  Raises:
    ValueError: naming the argument and the numbers that disagree.
  """
  get = inputs.get
  # The teacher-forced target first, so that a bad target fails before the encoder runs.
  if get("tgt_in_ids") is not None:
    common.check_token_ids("tgt_in_ids", inputs["tgt_in_ids"], config.tgt_vocab)
    _check_length(config, "tgt_in_ids", inputs["tgt_in_ids"].shape[1])

  src_ids = inputs["src_ids"]
  if "encoded" not in inputs:  # the encoder's arguments
    common.check_token_ids("src_ids", src_ids, config.src_vocab)
    b, s = src_ids.shape
    if get("src_embeds") is not None:
      _check_embeds(config, "src_embeds", inputs["src_embeds"], (b, s))
    _check_length(config, "src_ids", s)
    if get("src_positions") is not None:
      _check_positions(config, "src_positions", inputs["src_positions"], (b, s))
    if get("src_segment_ids") is not None:
      common.check_rank("src_segment_ids", inputs["src_segment_ids"], 2, "[batch, source_length]")
    return

  tgt_ids, tgt_embeds, encoded = get("tgt_ids"), get("tgt_embeds"), inputs["encoded"]
  if tgt_embeds is None:
    common.check_token_ids("tgt_ids", tgt_ids, config.tgt_vocab)
    b, t = tgt_ids.shape
  else:
    _check_embeds(config, "tgt_embeds", tgt_embeds, None if tgt_ids is None else tgt_ids.shape)
    b, t = tgt_embeds.shape[:2]
  common.check_token_ids("src_ids", src_ids, config.src_vocab)
  common.check_rank("encoded", encoded, 3, "[batch, source_length, d_model] (encode output)")
  if encoded.shape[:2] != src_ids.shape or encoded.shape[0] != b:
    raise ValueError(
        f"encoded {tuple(encoded.shape)} must be [B, S, D] matching src_ids "
        f"{tuple(src_ids.shape)} and the target batch {b}."
    )
  if (get("tgt_segment_ids") is None) != (get("src_segment_ids") is None):
    raise ValueError("pass both tgt_segment_ids and src_segment_ids, or neither.")
  if get("decode", False) and get("tgt_segment_ids") is not None:
    raise ValueError("decode=True does not support packed (segment_ids) targets.")
  # A decoding chunk is no longer than the cache, whose allocating call is checked here too.
  _check_length(config, "tgt_ids", t)
  if get("positions") is not None:
    _check_positions(config, "positions", inputs["positions"], (b, t))


class Transformer(nn.Module):
  """Encoder-decoder Transformer; ``__call__`` returns float32 logits ``[B, T, V]``."""

  config: TransformerConfig

  def setup(self):
    cfg = self.config
    embed = lambda vocab, name: common.TokenEmbedding(  # noqa: E731
        vocab, cfg.d_model, cfg.embed_std, cfg.dtype, cfg.param_dtype, name=name
    )
    if cfg.share_embeddings:
      self.shared = embed(cfg.src_vocab, "shared")
    else:
      self.encoder_embed = embed(cfg.src_vocab, "encoder_embed")
      self.decoder_embed = embed(cfg.tgt_vocab, "decoder_embed")
    if cfg.position == "learned":
      table = lambda name: LearnedPositionEmbedding(  # noqa: E731
          cfg.max_len, cfg.d_model, cfg.dtype, cfg.param_dtype,
          nn.initializers.normal(stddev=cfg.embed_std), name=name,
      )
      self.encoder_positions = table("encoder_positions")
      self.decoder_positions = table("decoder_positions")
    block = cfg.block()
    if cfg.embedding_norm:
      self.encoder_embedding_norm = make_norm(block, "encoder_embedding_norm")
      self.decoder_embedding_norm = make_norm(block, "decoder_embedding_norm")
    self.dropout = nn.Dropout(cfg.dropout_rate)
    self.encoder = common.layer_stack(cfg, EncoderBlock, cfg.num_encoder_layers, "encoder")
    self.decoder = common.layer_stack(
        cfg, DecoderBlock, cfg.num_decoder_layers, "decoder", cross_attention=True
    )
    if cfg.norm_position == "pre":
      self.encoder_norm = make_norm(block, "encoder_norm")
      self.decoder_norm = make_norm(block, "decoder_norm")
    if not cfg.tie_output:
      init = nn.initializers.xavier_uniform() if cfg.init_std is None else (
          nn.initializers.normal(stddev=cfg.init_std))
      self.lm_head = Einsum(
          (cfg.d_model, cfg.tgt_vocab), (sh.EMBED, sh.VOCAB), use_bias=False, dtype=cfg.dtype,
          param_dtype=cfg.param_dtype, kernel_init=init, name="lm_head",
      )
    if cfg.final_logits_bias:
      self.logits_bias = self.param(
          "final_logits_bias",
          nn.with_logical_partitioning(nn.initializers.zeros, (sh.VOCAB,)),
          (cfg.tgt_vocab,),
          cfg.param_dtype,
      )

  def _token_table(self, side: str) -> common.TokenEmbedding:
    if self.config.share_embeddings:
      return self.shared
    return self.encoder_embed if side == "src" else self.decoder_embed

  def _embed(self, side, ids, embeds, positions, deterministic):
    """Token embeddings (looked up, or given) * sqrt(D) + positions, normed, dropped out."""
    cfg = self.config
    x = self._token_table(side)(ids) if embeds is None else embeds.astype(cfg.dtype)
    if cfg.scale_embeddings:
      x = x * jnp.asarray(math.sqrt(cfg.d_model), cfg.dtype)
    index = positions + cfg.position_offset
    if cfg.position == "learned":
      table = self.encoder_positions if side == "src" else self.decoder_positions
      x = x + table(index)
    elif cfg.position == "sinusoidal":
      x = x + sinusoid_at(index, cfg.d_model, layout=cfg.sinusoid_layout).astype(cfg.dtype)
    if cfg.embedding_norm:
      norm = self.encoder_embedding_norm if side == "src" else self.decoder_embedding_norm
      x = norm(x).astype(cfg.dtype)
    return self.dropout(x, deterministic=deterministic)

  def encode(
      self,
      src_ids: Array,
      *,
      src_positions: Array | None = None,
      src_segment_ids: Array | None = None,
      src_embeds: Array | None = None,
      deterministic: bool = True,
  ) -> Array:
    """Encoder output ``[B, S, D]``.

    Args:
      src_ids: ``[B, S]`` source token ids; ``pad_id`` marks padding (never attended to).
      src_positions: ``[B, S]`` positions (restart per segment for packed rows); default arange.
      src_segment_ids: ``[B, S]`` packed-sequence ids; tokens attend only within their segment.
      src_embeds: ``[B, S, D]`` token embeddings used instead of looking up ``src_ids``
        (before the sqrt(D) scale and positions); ``src_ids`` still define the padding mask.
      deterministic: disables dropout.

    Returns:
      ``[B, S, D]`` in the compute dtype.
    """
    cfg = self.config
    validate(cfg, dict(
        src_ids=src_ids,
        src_positions=src_positions,
        src_segment_ids=src_segment_ids,
        src_embeds=src_embeds,
    ))
    b, s = src_ids.shape
    positions = src_positions
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(s)[None], (b, s))
    mask = attn.padding_mask(attn.valid_from_ids(src_ids, cfg.pad_id))
    if src_segment_ids is not None:
      mask = attn.combine_masks(mask, attn.segment_mask(src_segment_ids))
    x = self._embed("src", src_ids, src_embeds, positions, deterministic)
    x = self.encoder(x, BlockInputs(mask=mask, positions=positions), deterministic=deterministic)
    if cfg.norm_position == "pre":
      x = self.encoder_norm(x).astype(cfg.dtype)
    return x

  @nn.compact  # compact only for the "position" cache counter, created lazily when decoding
  def decode(
      self,
      tgt_ids: Array | None,
      encoded: Array,
      src_ids: Array,
      *,
      positions: Array | None = None,
      tgt_segment_ids: Array | None = None,
      src_segment_ids: Array | None = None,
      tgt_embeds: Array | None = None,
      deterministic: bool = True,
      decode: bool = False,
  ) -> Array:
    """Next-token logits of the decoder over an encoded source.

    Args:
      tgt_ids: ``[B, T]`` target input ids (shifted right); may be None with ``tgt_embeds``.
      encoded: ``[B, S, D]`` output of :meth:`encode`.
      src_ids: ``[B, S]`` the source ids (their padding is hidden from cross-attention).
      positions: ``[B, T]`` target positions; default arange, continued from the cache
        counter when decoding.
      tgt_segment_ids: ``[B, T]`` packed-sequence ids (with ``src_segment_ids``): target
        tokens attend only to their own segment, in both attentions.
      src_segment_ids: ``[B, S]`` the source's packed-sequence ids.
      tgt_embeds: ``[B, T, D]`` token embeddings used instead of looking up ``tgt_ids``
        (before the sqrt(D) scale and positions).
      deterministic: disables dropout.
      decode: autoregressive decoding with the self-attention KV cache
        (``mutable=["cache"]``).

    Returns:
      ``[B, T, V]`` float32 logits.
    """
    cfg = self.config
    validate(cfg, dict(
        tgt_ids=tgt_ids,
        tgt_embeds=tgt_embeds,
        encoded=encoded,
        src_ids=src_ids,
        positions=positions,
        tgt_segment_ids=tgt_segment_ids,
        src_segment_ids=src_segment_ids,
        decode=decode,
    ))
    b, t = tgt_ids.shape if tgt_embeds is None else tgt_embeds.shape[:2]
    start = common.decode_start(self, t, decode)
    if positions is None:
      positions = jnp.broadcast_to(start + jnp.arange(t)[None], (b, t))

    self_mask = None if decode else attn.causal_mask(t)  # the cache is causal by itself
    cross_mask = attn.valid_from_ids(src_ids, cfg.pad_id)[:, None, None, :]
    if tgt_segment_ids is not None:
      self_mask = attn.combine_masks(self_mask, attn.segment_mask(tgt_segment_ids))
      cross_mask = attn.combine_masks(
          cross_mask, attn.segment_mask(tgt_segment_ids, src_segment_ids)
      )
    x = self._embed("tgt", tgt_ids, tgt_embeds, positions, deterministic)
    inputs = BlockInputs(
        mask=self_mask,
        positions=positions,
        encoded=encoded.astype(cfg.dtype),
        cross_mask=cross_mask,
    )
    x = self.decoder(x, inputs, deterministic=deterministic, decode=decode)
    if cfg.norm_position == "pre":
      x = self.decoder_norm(x)
    if cfg.tie_output:
      logits_BTV = self._token_table("tgt").attend(x)
    else:
      logits_BTV = self.lm_head("BTD,DV->BTV", x).astype(jnp.float32)
    if cfg.final_logits_bias:
      logits_BTV = logits_BTV + self.logits_bias.astype(jnp.float32)
    return logits_BTV

  def __call__(
      self,
      src_ids: Array,
      tgt_in_ids: Array,
      *,
      deterministic: bool = True,
      decode: bool = False,
  ) -> Array:
    """Teacher-forced logits ``[B, T, V]`` (float32) of ``tgt_in_ids`` given ``src_ids``.

    ``decode=True`` with a ``[B, max_decode_len]`` target in ``init`` allocates the cache.
    """
    validate(self.config, dict(src_ids=src_ids, tgt_in_ids=tgt_in_ids))
    encoded = self.encode(src_ids, deterministic=deterministic)
    return self.decode(tgt_in_ids, encoded, src_ids, deterministic=deterministic, decode=decode)


def dummy_inputs(config: TransformerConfig, batch_size: int = 1, length: int = 1):
  """``(args, kwargs)`` for ``Transformer(config).init`` (shapes only matter)."""
  ids = jnp.zeros((batch_size, length), jnp.int32)
  return (ids, ids), {}


def init_cache(config: TransformerConfig, batch_size: int, max_decode_len: int) -> Any:
  """An empty decoding cache for ``batch_size`` rows of up to ``max_decode_len`` tokens.

  Built from shapes (``jax.eval_shape``): no parameters are initialised. Every entry of an
  empty cache is zero (keys/values, slot indices, the position counter).
  """
  model = Transformer(config)
  tgt = jnp.zeros((batch_size, max_decode_len), jnp.int32)
  src = jnp.zeros((batch_size, 1), jnp.int32)
  encoded = jnp.zeros((batch_size, 1, config.d_model), config.dtype)
  shapes = jax.eval_shape(
      lambda: model.init(
          jax.random.PRNGKey(0), tgt, encoded, src, decode=True, method=Transformer.decode
      )
  )
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def train_flops(config: TransformerConfig, params, shapes) -> dict[str, float]:
  """Training FLOPs of a step on ``src_ids`` ``(B, S)`` and ``tgt_in_ids`` ``(B, T)``."""
  b, s = shapes["src_ids"]
  t = shapes["tgt_in_ids"][1]
  enc = sum(common.count(v) for k, v in params.items() if k.startswith("encoder"))
  dec = sum(common.count(v) for k, v in params.items() if k.startswith("decoder"))
  out = common.count(params) - enc - dec  # token tables / output projection: target tokens
  d = config.d_model
  return common.train_flops(
      [(enc, b * s), (dec, b * t), (out, b * t)],
      [
          (config.num_encoder_layers, d, b * s, s, False),
          (config.num_decoder_layers, d, b * t, t, True),
          (config.num_decoder_layers, d, b * t, s, False),  # cross-attention
      ],
  )


def encode(model: Transformer, params, src_ids: Array) -> Array:
  """The encoder output ``[B, S, D]`` the decoder attends to."""
  return model.apply({"params": params}, src_ids, method="encode")


def decode_step(model: Transformer, params, cache, tgt_ids, encoded, src_ids):
  """``(logits [B, T, V], cache)`` of ``T`` new target tokens run through the decoder cache."""
  logits, mutated = model.apply(
      {"params": params, "cache": cache},
      tgt_ids,
      encoded,
      src_ids,
      decode=True,
      method="decode",
      mutable=["cache"],
  )
  return logits, mutated["cache"]


def num_positions(config: TransformerConfig) -> int | None:
  """Positions of either stack (``max_len`` less the offset); None with RoPE (unbounded)."""
  return None if config.position == "rope" else config.max_len - config.position_offset


registry.register(registry.Family(
    name="transformer",
    config_cls=TransformerConfig,
    model_cls=Transformer,
    dummy_inputs=dummy_inputs,
    train_flops=train_flops,
    tasks=("translation",),
    converters=("zoo.pretrained.marian",),
    validate=validate,
    inputs="source_target",
    seq2seq=registry.Seq2Seq(
        encode=encode,
        decode_step=decode_step,
        init_cache=lambda model, batch_size, num_slots: init_cache(
            model.config, batch_size, num_slots
        ),
        pad_id=lambda config: config.pad_id,
        source_vocab=lambda config: config.src_vocab,
        target_vocab=lambda config: config.tgt_vocab,
        source_length=num_positions,
        target_length=num_positions,
    ),
))
