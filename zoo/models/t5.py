"""T5 (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
Text-to-Text Transformer"): the 1.0, v1.1 / Flan-T5 and mT5 layouts.

One token table shared by encoder input, decoder input and (tied) output; no absolute
positions and no sqrt(D) embedding scale. Position enters as a learned relative-position bias
on the self-attention logits: relative distances are put into log-spaced buckets
(:func:`relative_position_bucket`, bidirectional in the encoder, causal in the decoder) and
each bucket has one value per head. The table is looked up once per stack at the top and
handed to every layer through ``BlockInputs.bias`` (umT5's one table per layer is
``relative_bias_per_layer``). Blocks are pre-RMS-norm without biases and without the
1/sqrt(H) logits scale (folded into the query's init); each stack ends with an RMS norm.
Logits: ``(x * D**-0.5) @ shared.T`` when tied (1.0), an ``lm_head`` without the scale when
untied (v1.1, Flan, mT5); the two switches are separate config fields.

Shapes: B batch, S source length, T target length, D model width, N heads, H head dim,
F mlp width, V vocabulary, R relative-position buckets.

Parameter tree (looped layers; ``scan_layers=True`` stacks ``layers_i`` into ``layers`` with
a leading [L] axis, see ``zoo.layers.stack.scan_params``), Hugging Face names on the right::

  shared/embedding               [V, D]     shared.weight
  encoder_relpos/embedding       [R, N]     encoder.block.0.layer.0.SelfAttention
                                            .relative_attention_bias.weight
  decoder_relpos/embedding       [R, N]     decoder.block.0 (the same)
  encoder/layers_i/attn/{query,key,value}/kernel
                                 [D, N, H]  encoder.block.i.layer.0.SelfAttention.{q,k,v}
                   attn/out/kernel [N, H, D]  ...SelfAttention.o
                   attn_norm/scale [D]      encoder.block.i.layer.0.layer_norm
                   mlp/wi/kernel [D, F]     layer.1.DenseReluDense.wi (1.0) / wi_1 (gated)
                   mlp/gate/kernel [D, F]   layer.1.DenseReluDense.wi_0 (gated only)
                   mlp/wo/kernel [F, D]     layer.1.DenseReluDense.wo
                   mlp_norm/scale [D]       encoder.block.i.layer.1.layer_norm
  encoder_norm/scale             [D]        encoder.final_layer_norm
  decoder/layers_i/attn, attn_norm          decoder.block.i.layer.0 (SelfAttention)
                   cross_attn, cross_norm   decoder.block.i.layer.1 (EncDecAttention)
                   mlp, mlp_norm            decoder.block.i.layer.2 (DenseReluDense)
  decoder_norm/scale             [D]        decoder.final_layer_norm
  lm_head/kernel                 [D, V]     lm_head.weight (untied only)

``encoder_only`` has no ``decoder*`` or ``lm_head`` entries. With ``relative_bias_per_layer``
there are no ``*_relpos`` entries: each layer owns ``encoder/layers_i/relpos/embedding`` and
``decoder/layers_i/relpos/embedding`` ``[R, N]`` (umT5's per-layer
``SelfAttention.relative_attention_bias``).

Decoding: as :mod:`zoo.models.transformer` (``init_cache``, then ``decode`` with
``decode=True, mutable=["cache"]``). The decoder's bias covers every cache slot: rows for this
call's positions (the ``position`` counter onwards), columns for slots ``0 .. num_slots - 1``.

The config and the argument checks (:class:`T5Config`, :func:`validate`) are in
:mod:`zoo.models.t5_config`; both are importable from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import struct

from zoo import registry
from zoo import sharding as sh
from zoo.layers import masks
from zoo.layers.blocks import BlockInputs, DecoderBlock, EncoderBlock, make_norm
from zoo.layers.dropout import Dropout
from zoo.layers.fused_cross_entropy import Projection
from zoo.models import common
from zoo.models.t5_config import T5Config, relative_position_bucket, validate

__all__ = ["T5", "T5Config", "validate", "relative_position_bucket", "position_buckets"]

Array = jax.Array


# ----------------------------------------------------------------------------------------------
# Relative positions.


def position_buckets(
    q_positions: Array, key_length: int, query_limit: int, *, bidirectional: bool,
    num_buckets: int, max_distance: int,
) -> Array:
  """``[T, S]`` int32 buckets of queries at ``q_positions`` ``[T]`` against keys ``0 .. S-1``.

  ``q_positions`` may be traced (decoding continues from a counter); their values must lie in
  ``[0, query_limit)``. The buckets of every possible offset are a small host-side table
  (:func:`relative_position_bucket`), gathered here.
  """
  offsets = np.arange(-(query_limit - 1), key_length)  # every key - query that can occur
  table = jnp.asarray(relative_position_bucket(
      offsets, bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
  ))
  rel_TS = jnp.arange(key_length)[None, :] - jnp.asarray(q_positions)[:, None]
  return table[jnp.clip(rel_TS + query_limit - 1, 0, len(offsets) - 1)]


class RelativePositionBias(nn.Module):
  """A ``[R, N]`` table (``embedding``); buckets ``[T, S]`` -> float32 bias ``[1, N, T, S]``."""

  num_buckets: int
  num_heads: int
  init_std: float
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, buckets_TS: Array) -> Array:
    table = self.param(
        "embedding",
        nn.with_logical_partitioning(nn.initializers.normal(self.init_std), (None, sh.HEADS)),
        (self.num_buckets, self.num_heads),
        self.param_dtype,
    )
    values_TSN = jnp.take(table.astype(jnp.float32), buckets_TS, axis=0)
    return jnp.einsum("TSN->NTS", values_TSN)[None]


@struct.dataclass(kw_only=True)
class T5BlockInputs(BlockInputs):
  """:class:`BlockInputs` plus the ``[T, S]`` buckets a layer with its own table looks up."""

  buckets: Array | None = None


def _own_bias(layer, inputs: T5BlockInputs) -> T5BlockInputs:
  """``inputs`` with the bias of ``layer``'s own table ``relpos`` (called in its compact call)."""
  cfg = layer.config
  table = RelativePositionBias(layer.num_buckets, cfg.num_heads, layer.bias_init_std,
                               cfg.param_dtype, name="relpos")
  return inputs.replace(bias=table(inputs.buckets))


class T5EncoderLayer(EncoderBlock):
  """An encoder block owning its bias table ``relpos/embedding`` (umT5's per-layer bias)."""

  num_buckets: int = 32
  bias_init_std: float = 1.0

  @nn.compact
  def __call__(self, x, inputs, deterministic=True, decode=False):
    return super().__call__(x, _own_bias(self, inputs), deterministic, decode)


class T5DecoderLayer(DecoderBlock):
  """A decoder block owning its bias table ``relpos/embedding`` (umT5's per-layer bias)."""

  num_buckets: int = 32
  bias_init_std: float = 1.0

  @nn.compact
  def __call__(self, x, inputs, deterministic=True, decode=False):
    return super().__call__(x, _own_bias(self, inputs), deterministic, decode)


# ----------------------------------------------------------------------------------------------
# The model.


class T5(nn.Module):
  """T5; ``__call__`` returns float32 logits ``[B, T, V]`` (``[B, S, D]`` when encoder-only)."""

  config: T5Config

  def setup(self):
    cfg = self.config
    factor = cfg.initializer_factor
    self.shared = common.TokenEmbedding(
        cfg.vocab_size, cfg.d_model, factor * 1.0, cfg.dtype, cfg.param_dtype, name="shared"
    )
    self.dropout = Dropout(cfg.dropout_rate)
    self.encoder_relpos, self.encoder = self._stack("encoder", EncoderBlock, T5EncoderLayer)
    self.encoder_norm = make_norm(cfg.block(), "encoder_norm")
    if cfg.encoder_only:
      return
    self.decoder_relpos, self.decoder = self._stack(
        "decoder", DecoderBlock, T5DecoderLayer, cross_attention=True
    )
    self.decoder_norm = make_norm(cfg.block(), "decoder_norm")
    if not cfg.tie_word_embeddings:
      self.lm_head = common.LMHead(
          cfg.vocab_size, cfg.d_model, nn.initializers.normal(factor * cfg.d_model**-0.5),
          cfg.dtype, cfg.param_dtype, name="lm_head",
      )

  def _stack(self, side: str, block_cls, own_table_cls, **block_kwargs):
    """``(shared bias table or None, layer stack)`` of the ``"encoder"`` / ``"decoder"``."""
    cfg = self.config
    std = cfg.initializer_factor * cfg.d_model**-0.5
    num_layers = cfg.num_encoder_layers if side == "encoder" else cfg.num_decoder_layers
    if cfg.relative_bias_per_layer:
      stack = common.layer_stack(
          cfg, own_table_cls, num_layers, side, num_buckets=cfg.relative_attention_num_buckets,
          bias_init_std=std, **block_kwargs,
      )
      return None, stack
    table = RelativePositionBias(cfg.relative_attention_num_buckets, cfg.num_heads, std,
                                 cfg.param_dtype, name=f"{side}_relpos")
    return table, common.layer_stack(cfg, block_cls, num_layers, side, **block_kwargs)

  def _block_inputs(self, table, buckets_TS: Array, **fields) -> BlockInputs:
    """The stack's inputs: the shared table's bias, or the buckets for per-layer tables."""
    if table is None:
      return T5BlockInputs(buckets=buckets_TS, **fields)
    return BlockInputs(bias=table(buckets_TS), **fields)

  def _embed(self, ids: Array, embeds: Array | None, deterministic: bool) -> Array:
    x = self.shared(ids) if embeds is None else embeds.astype(self.config.dtype)
    return self.dropout(x, deterministic=deterministic)

  def _buckets(self, q_positions, key_length: int, query_limit: int, bidirectional: bool):
    cfg = self.config
    return position_buckets(
        q_positions, key_length, query_limit, bidirectional=bidirectional,
        num_buckets=cfg.relative_attention_num_buckets,
        max_distance=cfg.relative_attention_max_distance,
    )

  def encode(
      self, src_ids: Array, *, src_embeds: Array | None = None, deterministic: bool = True
  ) -> Array:
    """Encoder output ``[B, S, D]`` (after the final norm), in the compute dtype.

    Args:
      src_ids: ``[B, S]`` source token ids; ``pad_id`` marks padding (never attended to).
      src_embeds: ``[B, S, D]`` token embeddings used instead of looking up ``src_ids``;
        ``src_ids`` still define the padding.
      deterministic: disables dropout.
    """
    cfg = self.config
    validate(cfg, dict(src_ids=src_ids, src_embeds=src_embeds))
    s = src_ids.shape[1]
    # Keys only, as transformers: padded queries still read the real keys (finite outputs).
    mask_B11S = (src_ids != cfg.pad_id)[:, None, None, :]
    buckets = self._buckets(jnp.arange(s), s, s, bidirectional=True)
    inputs = self._block_inputs(self.encoder_relpos, buckets, mask=mask_B11S)
    x = self._embed(src_ids, src_embeds, deterministic)
    x = self.encoder(x, inputs, deterministic=deterministic)
    x = self.encoder_norm(x).astype(cfg.dtype)
    return self.dropout(x, deterministic=deterministic)

  def _cache_slots(self) -> int | None:
    """Slots of the decoder's self-attention cache (None before it is allocated)."""
    cache = self.variables.get("cache", {}).get("decoder", {})
    for path, leaf in jax.tree_util.tree_leaves_with_path(cache):
      if getattr(path[-1], "key", None) == "cached_key":
        return leaf.shape[-3]  # [(L,) B, slots, K, H]
    return None

  @nn.compact  # compact only for the "position" cache counter, created lazily when decoding
  def decode(
      self,
      tgt_ids: Array | None,
      encoded: Array,
      src_ids: Array,
      *,
      tgt_embeds: Array | None = None,
      deterministic: bool = True,
      decode: bool = False,
      return_projection: bool = False,
  ) -> Array | Projection:
    """Next-token logits of the decoder over an encoded source.

    Args:
      tgt_ids: ``[B, T]`` target input ids (shifted right, starting with
        ``decoder_start_id``); may be None with ``tgt_embeds``.
      encoded: ``[B, S, D]`` output of :meth:`encode`.
      src_ids: ``[B, S]`` the source ids (their padding is hidden from cross-attention).
      tgt_embeds: ``[B, T, D]`` token embeddings used instead of looking up ``tgt_ids``.
      deterministic: disables dropout.
      decode: autoregressive decoding with the self-attention KV cache
        (``mutable=["cache"]``).
      return_projection: return the output head's :class:`Projection` (decoder output, head
        weight, the ``d_model**-0.5`` scale when ``scales_outputs``) instead of the logits.

    Returns:
      ``[B, T, V]`` float32 logits, or the head's :class:`Projection`.
    """
    cfg = self.config
    validate(cfg, dict(tgt_ids=tgt_ids, tgt_embeds=tgt_embeds, encoded=encoded, src_ids=src_ids))
    t = tgt_ids.shape[1] if tgt_embeds is None else tgt_embeds.shape[1]
    slots = self._cache_slots() if decode else None
    start = common.decode_start(self, t, decode)
    keys = t if slots is None else slots  # cached: columns for every slot, written or not
    buckets = self._buckets(start + jnp.arange(t), keys, keys, bidirectional=False)
    inputs = self._block_inputs(
        self.decoder_relpos,
        buckets,
        mask=None if decode else masks.causal_mask(t),  # the cache is causal by itself
        encoded=encoded.astype(cfg.dtype),
        cross_mask=(src_ids != cfg.pad_id)[:, None, None, :],
    )
    x = self._embed(tgt_ids, tgt_embeds, deterministic)
    x = self.decoder(x, inputs, deterministic=deterministic, decode=decode)
    x = self.dropout(self.decoder_norm(x).astype(cfg.dtype), deterministic=deterministic)
    scale = cfg.d_model**-0.5 if cfg.scales_outputs else None
    head = self.shared if cfg.tie_word_embeddings else self.lm_head
    if return_projection:
      return head.projection(x, scale=scale)
    if scale is not None:
      x = x * jnp.asarray(scale, cfg.dtype)
    return head.attend(x) if cfg.tie_word_embeddings else head(x)

  def __call__(
      self,
      src_ids: Array,
      tgt_in_ids: Array | None = None,
      *,
      deterministic: bool = True,
      decode: bool = False,
      return_projection: bool = False,
  ) -> Array | Projection:
    """Teacher-forced logits ``[B, T, V]`` (float32) of ``tgt_in_ids`` given ``src_ids``.

    Encoder-only models take ``src_ids`` alone and return the encoder output ``[B, S, D]``.
    ``decode=True`` with a ``[B, max_decode_len]`` target in ``init`` allocates the cache.
    ``return_projection=True`` returns the head's :class:`Projection` instead (see
    :meth:`decode`).
    """
    cfg = self.config
    validate(cfg, dict(src_ids=src_ids, tgt_in_ids=tgt_in_ids))
    if cfg.encoder_only and return_projection:
      raise ValueError("return_projection=True: an encoder_only=True T5 has no output head; "
                       "call it without return_projection.")
    if cfg.encoder_only:
      return self.encode(src_ids, deterministic=deterministic)
    if tgt_in_ids is None:
      raise ValueError(
          "T5 needs tgt_in_ids [B, T] (decoder inputs starting with decoder_start_id="
          f"{cfg.decoder_start_id}); only an encoder_only=True model takes src_ids alone."
      )
    encoded = self.encode(src_ids, deterministic=deterministic)
    return self.decode(
        tgt_in_ids, encoded, src_ids, deterministic=deterministic, decode=decode,
        return_projection=return_projection,
    )


# ----------------------------------------------------------------------------------------------
# What the registry needs.


def dummy_inputs(config: T5Config, batch_size: int = 1, length: int = 1):
  """``(args, kwargs)`` for ``T5(config).init`` (shapes only matter)."""
  ids = jnp.zeros((batch_size, length), jnp.int32)
  return ((ids,) if config.encoder_only else (ids, ids)), {}


def init_cache(config: T5Config, batch_size: int, max_decode_len: int) -> Any:
  """An empty (all zero) decoding cache for ``batch_size`` rows of up to ``max_decode_len``
  tokens, built from shapes (``jax.eval_shape``): no parameters are initialised."""
  model = T5(config)
  tgt = jnp.zeros((batch_size, max_decode_len), jnp.int32)
  src = jnp.zeros((batch_size, 1), jnp.int32)
  encoded = jnp.zeros((batch_size, 1, config.d_model), config.dtype)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), tgt, encoded, src, decode=True, method=T5.decode)
  )
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])


def train_flops(config: T5Config, params, shapes) -> dict[str, float]:
  """Training FLOPs of a step on ``src_ids`` ``(B, S)`` and ``tgt_in_ids`` ``(B, T)``.

  The relative-position tables and an untied input table are lookups, not matmuls.
  """
  b, s = shapes["src_ids"]
  part = lambda *names: sum(common.count(params[n]) for n in names if n in params)  # noqa: E731
  width = config.num_heads * config.head_dim  # the attention's q.k and weights.v width
  matmuls = [(part("encoder", "encoder_norm"), b * s)]
  attention = [(config.num_encoder_layers, width, b * s, s, False)]
  if not config.encoder_only:
    t = shapes["tgt_in_ids"][1]
    out = part("shared") if config.tie_word_embeddings else part("lm_head")
    matmuls += [(part("decoder", "decoder_norm"), b * t), (out, b * t)]
    attention += [
        (config.num_decoder_layers, width, b * t, t, True),
        (config.num_decoder_layers, width, b * t, s, False),  # cross-attention
    ]
  return common.train_flops(matmuls, attention)


def encode(model: T5, params, src_ids: Array) -> Array:
  """The encoder output ``[B, S, D]`` the decoder attends to."""
  return model.apply({"params": params}, src_ids, method="encode")


def decode_step(model: T5, params, cache, tgt_ids, encoded, src_ids):
  """``(logits [B, T, V], cache)`` of ``T`` new target tokens run through the decoder cache."""
  logits, mutated = model.apply(
      {"params": params, "cache": cache}, tgt_ids, encoded, src_ids, decode=True,
      method="decode", mutable=["cache"],
  )
  return logits, mutated["cache"]


def hidden_states(model: T5, params, batch: Mapping[str, Any]) -> Array:
  """The encoder's last hidden states ``[B, L, D]`` of a tokenizer's batch (``input_ids``;
  positions where ``attention_mask`` is 0 are treated as padding)."""
  ids = jnp.asarray(batch["input_ids"])
  if batch.get("attention_mask") is not None:
    ids = jnp.where(jnp.asarray(batch["attention_mask"]) > 0, ids, model.config.pad_id)
  return encode(model, params, ids)


registry.register(registry.Family(
    name="t5",
    config_cls=T5Config,
    model_cls=T5,
    dummy_inputs=dummy_inputs,
    train_flops=train_flops,
    tasks=("translation", "span_corruption", "summarization"),
    converters=("zoo.pretrained.t5",),
    validate=validate,
    inputs="source_target",
    seq2seq=registry.Seq2Seq(
        encode=encode,
        decode_step=decode_step,
        init_cache=lambda model, batch_size, num_slots: init_cache(
            model.config, batch_size, num_slots
        ),
        pad_id=lambda config: config.pad_id,
        source_vocab=lambda config: config.vocab_size,
        target_vocab=lambda config: config.vocab_size,
        source_length=lambda config: None,  # relative positions: any length
        target_length=lambda config: None,
        start_id=lambda config: config.decoder_start_id,
        eos_id=lambda config: config.eos_id,
    ),
    text_encoder=registry.TextEncoder(
        token_embeddings=lambda params: params["shared"]["embedding"],
        hidden_states=hidden_states,
    ),
))
