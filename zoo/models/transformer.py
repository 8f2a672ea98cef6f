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
  final_logits_bias                  [Vt]    when final_logits_bias (head="lm" only)
  classification_head/dense/{kernel [D, D], bias}, out_proj/{kernel [D, C], bias}
                                     head="sequence_classification" (BART; no LM head then)

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

The config and the argument checks (:class:`TransformerConfig`, :func:`validate`) are in
:mod:`zoo.models.transformer_config`; both are importable from here. BART's classifier and
``shift_right`` (labels -> decoder inputs) are in :mod:`zoo.models.transformer_heads`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from zoo import registry
from zoo import sharding as sh
from zoo.layers import masks
from zoo.layers.blocks import BlockInputs, DecoderBlock, EncoderBlock, make_norm
from zoo.layers.dropout import Dropout
from zoo.layers.fused_cross_entropy import Projection
from zoo.layers.positional import LearnedPositionEmbedding, sinusoid_at
from zoo.models import common
from zoo.models.transformer_config import TransformerConfig, validate
from zoo.models.transformer_heads import ClassificationHead, last_eos, shift_right

Array = jax.Array


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
    self.dropout = Dropout(cfg.dropout_rate)
    self.encoder = common.layer_stack(cfg, EncoderBlock, cfg.num_encoder_layers, "encoder")
    self.decoder = common.layer_stack(
        cfg, DecoderBlock, cfg.num_decoder_layers, "decoder", cross_attention=True
    )
    if cfg.norm_position == "pre":
      self.encoder_norm = make_norm(block, "encoder_norm")
      self.decoder_norm = make_norm(block, "decoder_norm")
    if cfg.head == "sequence_classification":
      self.classification_head = ClassificationHead(cfg, name="classification_head")
    elif not cfg.tie_output:
      init = nn.initializers.xavier_uniform() if cfg.init_std is None else (
          nn.initializers.normal(stddev=cfg.init_std))
      self.lm_head = common.LMHead(
          cfg.tgt_vocab, cfg.d_model, init, cfg.dtype, cfg.param_dtype, name="lm_head"
      )
    if cfg.final_logits_bias and cfg.head == "lm":
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
    mask = masks.padding_mask(masks.valid_from_ids(src_ids, cfg.pad_id))
    if src_segment_ids is not None:
      mask = masks.combine_masks(mask, masks.segment_mask(src_segment_ids))
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
      return_projection: bool = False,
      return_hidden: bool = False,
  ) -> Array | Projection:
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
      return_projection: return the output head's :class:`Projection` (decoder output, head
        weight, final-logits bias) instead of the logits, for a fused loss.
      return_hidden: return the decoder's last hidden states ``[B, T, D]`` (the classifier's
        input) instead of the logits.

    Returns:
      ``[B, T, V]`` float32 logits, the head's :class:`Projection`, or the hidden states.
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

    self_mask = None if decode else masks.causal_mask(t)  # the cache is causal by itself
    cross_mask = masks.valid_from_ids(src_ids, cfg.pad_id)[:, None, None, :]
    if tgt_segment_ids is not None:
      self_mask = masks.combine_masks(self_mask, masks.segment_mask(tgt_segment_ids))
      cross_mask = masks.combine_masks(
          cross_mask, masks.segment_mask(tgt_segment_ids, src_segment_ids)
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
    if return_hidden:
      return x
    if cfg.head != "lm":
      raise ValueError(f"head={cfg.head!r} has no output projection: decode logits need "
                       "head='lm' (return_hidden=True gives the decoder's states).")
    head = self._token_table("tgt") if cfg.tie_output else self.lm_head
    if return_projection:
      return head.projection(x, bias=self.logits_bias if cfg.final_logits_bias else None)
    logits_BTV = head.attend(x) if cfg.tie_output else head(x)
    if cfg.final_logits_bias:
      logits_BTV = logits_BTV + self.logits_bias.astype(jnp.float32)
    return logits_BTV

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

    ``tgt_in_ids=None`` feeds the decoder ``src_ids`` shifted right (:func:`shift_right`,
    what transformers' BART does without decoder inputs). With
    ``head="sequence_classification"`` the result is ``[B, num_labels]`` float32 logits of the
    decoder state at each row's last ``eos_id`` in ``src_ids``. ``decode=True`` with a ``[B,
    max_decode_len]`` target in ``init`` allocates the cache. ``return_projection=True``
    returns the head's :class:`Projection` instead (see :meth:`decode`).
    """
    cfg = self.config
    if tgt_in_ids is None:
      tgt_in_ids = shift_right(cfg, src_ids)
    validate(cfg, dict(src_ids=src_ids, tgt_in_ids=tgt_in_ids))
    encoded = self.encode(src_ids, deterministic=deterministic)
    if cfg.head == "sequence_classification":
      hidden_BTD = self.decode(tgt_in_ids, encoded, src_ids, deterministic=deterministic,
                               return_hidden=True)
      return self.classification_head(hidden_BTD, last_eos(cfg, src_ids), deterministic)
    return self.decode(
        tgt_in_ids, encoded, src_ids, deterministic=deterministic, decode=decode,
        return_projection=return_projection,
    )


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
    tasks=("translation", "span_corruption", "summarization", "denoising"),
    converters=("zoo.pretrained.marian", "zoo.pretrained.bart"),
    validate=validate,
    inputs="source_target",
    seq2seq=registry.Seq2Seq(
        encode=encode,
        decode_step=decode_step,
        init_cache=lambda model, batch_size, num_slots: init_cache(
            model.config, batch_size, num_slots
        ),
        pad_id=lambda config: config.pad_id,
        start_id=lambda config: None if config.decoder_start_id < 0 else config.decoder_start_id,
        eos_id=lambda config: None if config.eos_id < 0 else config.eos_id,
        source_vocab=lambda config: config.src_vocab,
        target_vocab=lambda config: config.tgt_vocab,
        source_length=num_positions,
        target_length=num_positions,
    ),
))
