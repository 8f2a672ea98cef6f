"""BERT: a bidirectional encoder with segment embeddings, a [CLS] pooler and task heads.

What is different from the other families: word + segment (token type) + position
embeddings summed and normalised, post-LN encoder blocks, a pooler (dense + tanh on the
first token), and the heads of Devlin et al. 2019: pretraining (masked LM tied to the word
embeddings, plus next-sentence prediction), masked LM only, sequence classification, token
classification and extractive question answering (a start and an end logit per token).

Its descendants are options of the same config, not families: RoBERTa / XLM-R count
positions from ``pad_id + 1`` over real tokens (``position_ids="after_pad"``) with one token
type; DistilBERT has no segment table (``token_types=False``) and no pooler; ELECTRA embeds
at ``embedding_size`` and projects to ``d_model`` (``embeddings_project``). Their two-layer
sequence classifiers on the first token are ``classifier_head`` tanh / gelu / relu, and
ELECTRA's discriminator is ``head="replaced_token_detection"`` (one logit per token, in
``"logits"`` ``[B, L]``). The heads beyond the paper's live in :mod:`zoo.models.bert_heads`.

Given ``masked_positions`` ``[B, P]`` the masked-LM head scores only those positions (the
original BERT's ``max_predictions_per_seq``): ``mlm_logits`` is ``[B, P, V]``, not
``[B, L, V]``. The config and the input checks live in :mod:`zoo.models.bert_config`.

Shapes: B batch, L length, P masked-LM predictions, D width, E embedding width
(``embedding_size``, default D), V vocabulary, C classes (``num_labels``).

Parameter tree (names mirror Hugging Face ``BertForPreTraining`` where it costs nothing;
``[..]`` are shapes, looped layers shown, ``scan_layers=True`` stacks them under
``encoder/layers`` with a leading ``[num_layers]`` axis)::

  embeddings/word_embeddings/embedding       [V, E]      bert.embeddings.word_embeddings
  embeddings/position_embeddings/embedding   [max_len, E] (position="learned" only)
  embeddings/token_type_embeddings/embedding [type_vocab_size, E] (token_types=True only)
  embeddings/norm/{scale, bias}              [E]         embeddings.LayerNorm
  embeddings_project/{kernel [E, D], bias [D]}           ELECTRA (embedding_size != d_model)
  encoder/layers_i/attn/{query,key,value}/kernel [D, N, H], bias [N, H]
                                             attention.self.{query,key,value} (W.T reshaped)
  encoder/layers_i/attn/out/kernel [N, H, D], bias [D]   attention.output.dense
  encoder/layers_i/attn_norm/{scale, bias}   [D]         attention.output.LayerNorm
  encoder/layers_i/mlp/wi/kernel [D, F], bias [F]        intermediate.dense
  encoder/layers_i/mlp/wo/kernel [F, D], bias [D]        output.dense
  encoder/layers_i/mlp_norm/{scale, bias}    [D]         output.LayerNorm
  final_norm/{scale, bias}                   [D]         (norm_position="pre" only)
  pooler/{kernel [D, D], bias [D]}                       bert.pooler.dense (pooler=True only)
  mlm/transform/{kernel [D, D], bias [D]}                cls.predictions.transform.dense
  mlm/norm/{scale, bias}                     [D]         cls.predictions.transform.LayerNorm
  mlm/bias                                   [V]         cls.predictions.bias
  nsp/{kernel [D, 2], bias [2]}                          cls.seq_relationship
  classifier/{kernel [D, C], bias [C]}                   classifier
  classifier/{dense [D, D], out_proj [D, C]}             classifier.{dense,out_proj}
                                                         (classifier_head != "linear")
  discriminator_predictions/{dense [D, D], dense_prediction [D, 1]}  (ELECTRA's RTD head)
  qa_outputs/{kernel [D, 2], bias [2]}                   qa_outputs (BertForQuestionAnswering)

The MLM decoder has no kernel of its own: it is the word embedding table transposed
(``cls.predictions.decoder.weight`` is tied to it in Hugging Face too). Dense kernels are
PyTorch ``Linear.weight`` transposed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from zoo import registry
from zoo import sharding as sh
from zoo.layers import masks
from zoo.layers.blocks import ACTIVATIONS, BlockInputs, EncoderBlock, make_norm
from zoo.layers.dense import Einsum
from zoo.layers.dropout import Dropout
from zoo.layers.fused_cross_entropy import Projection
from zoo.layers.positional import LearnedPositionEmbedding, sinusoid_at
from zoo.models import bert_heads, common
from zoo.models.bert_config import (  # noqa: F401 - importable from here
    HEAD_KINDS,
    MLM_HEADS,
    POSITION_KINDS,
    BertConfig,
    BertHead,
    BertPosition,
    check_masked_positions,
    reads_token_types,
    validate,
)
from zoo.models.bert_heads import ClassificationHead, DiscriminatorHead

Array = jax.Array


_dense = bert_heads.dense


def default_positions(cfg: BertConfig, input_ids: Array, segment_ids: Array | None) -> Array:
  """``[B, L]`` positions of ``cfg.position_ids``: ``arange(L)`` (restarting at each packed
  segment), or RoBERTa's count of real tokens from ``pad_id + 1`` with pad tokens at ``pad_id``."""
  b, length = input_ids.shape
  if segment_ids is not None:
    index = segment_positions(segment_ids)
  else:
    index = jnp.broadcast_to(jnp.arange(length)[None], (b, length))
  if cfg.position_ids == "index":
    return index
  real = input_ids != cfg.pad_id
  if segment_ids is None:
    index = jnp.cumsum(real, axis=1) - 1
  return jnp.where(real, index + cfg.pad_id + 1, cfg.pad_id)


def segment_positions(segment_ids: Array) -> Array:
  """``[B, L]`` packed-segment ids -> positions restarting at 0 where the id changes."""
  b, length = segment_ids.shape
  idx = jnp.broadcast_to(jnp.arange(length)[None], (b, length))
  starts = jnp.concatenate(
      [jnp.ones((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1
  )
  return idx - jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)


class BertEmbeddings(nn.Module):
  """Word + token type + position embeddings, LayerNorm, dropout; ``attend`` ties the MLM."""

  config: BertConfig

  def setup(self):
    cfg = self.config
    init = nn.initializers.normal(cfg.init_std)
    self.word_embeddings = common.TokenEmbedding(
        cfg.vocab_size, cfg.d_embed, cfg.init_std, cfg.dtype, cfg.param_dtype
    )
    if cfg.position == "learned":
      self.position_embeddings = LearnedPositionEmbedding(
          cfg.max_len, cfg.d_embed, cfg.dtype, cfg.param_dtype, init
      )
    if cfg.token_types:
      # Two rows, replicated (None): too small to shard and not a vocabulary axis.
      self.token_type_embeddings = nn.Embed(
          cfg.type_vocab_size,
          cfg.d_embed,
          dtype=cfg.dtype,
          param_dtype=cfg.param_dtype,
          embedding_init=nn.with_logical_partitioning(init, (None, sh.EMBED)),
      )
    self.norm = make_norm(cfg.block(), "norm")
    self.dropout = Dropout(cfg.dropout_rate)

  def __call__(
      self, input_ids: Array, token_type_ids: Array, positions: Array, deterministic: bool
  ) -> Array:
    """``[B, L]`` ids, types, positions -> ``[B, L, D]``."""
    cfg = self.config
    x = self.word_embeddings(input_ids)
    if cfg.token_types:
      x = x + self.token_type_embeddings(token_type_ids)
    if cfg.position == "learned":
      x = x + self.position_embeddings(positions)
    elif cfg.position == "sinusoidal":
      x = x + sinusoid_at(positions, cfg.d_embed).astype(cfg.dtype)
    x = self.norm(x).astype(cfg.dtype)
    return self.dropout(x, deterministic=deterministic)

  def attend(self, x: Array) -> Array:
    """``[B, L, D]`` -> ``[B, L, V]`` float32 logits against the word embedding table."""
    return self.word_embeddings.attend(x)

  def projection(self, x: Array, bias: Array) -> Projection:
    """What ``attend(x) + bias`` would project, as a record for a fused loss."""
    return self.word_embeddings.projection(x, bias=bias)


class MLMHead(nn.Module):
  """``transform`` dense + activation + LayerNorm, tied decoder, output bias ``[V]``."""

  config: BertConfig

  @nn.compact
  def __call__(
      self, x: Array, embeddings: BertEmbeddings, masked_positions: Array | None = None,
      return_projection: bool = False,
  ) -> Array | Projection:
    """``[B, L, D]`` -> ``[B, L, V]`` float32 logits, or ``[B, P, V]`` at ``masked_positions``
    (their :class:`Projection` with ``return_projection``).

    The gather comes first, so the transform, norm and the ``[D, V]`` decoder only see the
    ``P`` positions that carry a label (the original BERT's ``gather_indexes``).
    """
    cfg = self.config
    if masked_positions is not None:
      x = jnp.take_along_axis(x, masked_positions.astype(jnp.int32)[..., None], axis=1)  # BPD
    h = _dense(cfg, cfg.d_model, (sh.EMBED, sh.MLP), "transform")("BLD,DF->BLF", x)
    h = ACTIVATIONS[cfg.activation](h)
    h = make_norm(cfg.block(), "norm")(h).astype(cfg.dtype)
    bias = self.param(
        "bias",
        nn.with_logical_partitioning(nn.initializers.zeros, (sh.VOCAB,)),
        (cfg.vocab_size,),
        cfg.param_dtype,
    )
    if return_projection:
      return embeddings.projection(h, bias)
    logits_BLV = embeddings.attend(h)
    return logits_BLV + bias.astype(jnp.float32)


class Bert(nn.Module):
  """BERT encoder with the head chosen by ``config.head``; returns a dict of outputs."""

  config: BertConfig

  @nn.compact
  def __call__(
      self,
      input_ids: Array,
      *,
      token_type_ids: Array | None = None,
      attention_mask: Array | None = None,
      positions: Array | None = None,
      segment_ids: Array | None = None,
      masked_positions: Array | None = None,
      deterministic: bool = True,
      return_projection: bool = False,
  ) -> dict[str, Array]:
    """Encoder outputs and head logits.

    Args:
      input_ids: ``[B, L]`` int token ids.
      token_type_ids: ``[B, L]`` segment (sentence A = 0 / B = 1) ids; default all 0. Not
        read by a model of one segment type or none (RoBERTa, DistilBERT), as there.
      attention_mask: ``[B, L]`` bool or int, True / 1 for real tokens; keys at False are
        never attended to. Default ``input_ids != pad_id``.
      positions: ``[B, L]`` positions; default ``arange(L)``, or restarting at each segment
        when ``segment_ids`` is given (``position_ids="after_pad"``: those plus ``pad_id + 1``
        on real tokens, counted over non-pad ids without segments; ``pad_id`` on pad tokens).
      segment_ids: ``[B, L]`` ids of sequences packed into one row; tokens attend only
        within their own segment. ``pooled`` (and the NSP / sequence heads) read the row's
        first token, i.e. the first segment's [CLS].
      masked_positions: ``[B, P]`` int positions the MLM head scores (the tokens selected for
        masking, unused slots any valid position); None scores every position.
      deterministic: disables dropout (pass a ``"dropout"`` rng when False).
      return_projection: ``"mlm_logits"`` is the MLM head's :class:`Projection` (hidden
        states, tied table, bias; the logits are not computed), for a fused loss.

    Returns:
      ``{"last_hidden_state": [B, L, D], "pooled": [B, D]}`` (no "pooled" when
      ``pooler=False``) in the compute dtype, plus by
      head (float32): ``"mlm_logits"`` ``[B, L, V]`` (``[B, P, V]`` with
      ``masked_positions``) and ``"nsp_logits"`` ``[B, 2]``
      (pretraining), ``"mlm_logits"`` (mlm), ``"logits"`` ``[B, C]`` (sequence
      classification) or ``[B, L, C]`` (token classification), ``"start_logits"`` and
      ``"end_logits"`` ``[B, L]`` (question answering; padded positions are not masked),
      ``"logits"`` ``[B, L]`` (replaced-token detection).
    """
    cfg = self.config
    validate(cfg, dict(
        input_ids=input_ids,
        token_type_ids=token_type_ids,
        attention_mask=attention_mask,
        positions=positions,
        segment_ids=segment_ids,
        masked_positions=masked_positions,
    ))
    if masked_positions is not None:
      masked_positions = jnp.asarray(masked_positions)
    if token_type_ids is None or not reads_token_types(cfg):
      token_type_ids = jnp.zeros_like(input_ids)
    if positions is None:
      positions = default_positions(cfg, input_ids, segment_ids)
    if attention_mask is None:
      attention_mask = masks.valid_from_ids(input_ids, cfg.pad_id)
    # Keys only (as in Hugging Face): padded queries compute values nobody reads, and a
    # fully padded row stays finite thanks to the finite mask value.
    mask = jnp.asarray(attention_mask).astype(bool)[:, None, None, :]
    if segment_ids is not None:
      mask = masks.combine_masks(mask, masks.segment_mask(segment_ids))

    embeddings = BertEmbeddings(cfg, name="embeddings")
    x = embeddings(input_ids, token_type_ids, positions, deterministic)
    if cfg.d_embed != cfg.d_model:  # ELECTRA's embeddings_project
      project = Einsum((cfg.d_embed, cfg.d_model), (sh.EMBED, sh.MLP), dtype=cfg.dtype,
                       param_dtype=cfg.param_dtype,
                       kernel_init=nn.initializers.normal(cfg.init_std), name="embeddings_project")
      x = project("BLE,ED->BLD", x)
    x = common.layer_stack(cfg, EncoderBlock, cfg.num_layers, "encoder")(
        x, BlockInputs(mask=mask, positions=positions), deterministic=deterministic
    )
    if cfg.norm_position == "pre":
      x = make_norm(cfg.block(), "final_norm")(x).astype(cfg.dtype)
    out = {"last_hidden_state": x}
    pooled = None
    if cfg.pooler:
      pooler = _dense(cfg, cfg.d_model, (sh.EMBED, sh.MLP), "pooler")
      pooled = jnp.tanh(pooler("BD,DF->BF", x[:, 0]))
      out["pooled"] = pooled
    return {**out, **_head(
        cfg, x, pooled, embeddings, deterministic, masked_positions, return_projection
    )}


def _head(
    cfg: BertConfig, x: Array, pooled: Array | None, embeddings: BertEmbeddings,
    deterministic: bool, masked_positions: Array | None = None, return_projection: bool = False,
) -> dict[str, Array]:
  """The float32 outputs of ``cfg.head`` from ``x`` ``[B, L, D]`` and ``pooled`` ``[B, D]``
  (the MLM head only at ``masked_positions`` ``[B, P]`` when given).

  Called inside :class:`Bert`'s compact ``__call__``: the layers made here are its children.
  """
  out = {}
  if cfg.head in MLM_HEADS:
    out["mlm_logits"] = MLMHead(cfg, name="mlm")(
        x, embeddings, masked_positions, return_projection
    )
  if cfg.head == "pretraining":
    nsp = _dense(cfg, 2, (sh.EMBED, sh.CLASSES), "nsp")
    out["nsp_logits"] = nsp("BD,DC->BC", pooled).astype(jnp.float32)
  if cfg.head == "sequence_classification" and cfg.classifier_head != "linear":
    out["logits"] = ClassificationHead(cfg, name="classifier")(x, deterministic)
  elif cfg.head in ("sequence_classification", "token_classification"):
    rate = cfg.dropout_rate if cfg.classifier_dropout is None else cfg.classifier_dropout
    feats = pooled if cfg.head == "sequence_classification" else x
    feats = Dropout(rate)(feats, deterministic=deterministic)
    classifier = _dense(cfg, cfg.num_labels, (sh.EMBED, sh.CLASSES), "classifier")
    out["logits"] = classifier("...D,DC->...C", feats).astype(jnp.float32)
  if cfg.head == "question_answering":
    # No dropout before the span head, as in Hugging Face's BertForQuestionAnswering.
    qa = _dense(cfg, 2, (sh.EMBED, sh.CLASSES), "qa_outputs")
    logits_BL2 = qa("BLD,DC->BLC", x).astype(jnp.float32)
    out["start_logits"], out["end_logits"] = logits_BL2[..., 0], logits_BL2[..., 1]
  if cfg.head == "replaced_token_detection":
    out["logits"] = DiscriminatorHead(cfg, name="discriminator_predictions")(x)
  return out


def dummy_inputs(config: BertConfig, batch_size: int = 1, length: int = 1):
  """``(args, kwargs)`` for ``Bert(config).init`` (shapes only matter)."""
  return (jnp.zeros((batch_size, length), jnp.int32),), {}


def train_flops(config: BertConfig, params, shapes) -> dict[str, float]:
  """Training FLOPs of a step on ``input_ids`` of ``shapes["input_ids"] = (B, L)``.

  With ``shapes["masked_positions"] = (B, P)`` the MLM transform and the tied ``[D, V]``
  decoder see ``B * P`` tokens instead of ``B * L``.
  """
  b, length = shapes["input_ids"]
  emb = params["embeddings"]
  lookups = sum(
      common.count(emb.get(k, {})) for k in ("position_embeddings", "token_type_embeddings")
  )
  # The pooler, NSP and sequence-classifier heads see one [CLS] vector per row.
  per_row = common.count(params.get("pooler", {})) + common.count(params.get("nsp", {}))
  if config.head == "sequence_classification":
    per_row += common.count(params.get("classifier", {}))
  n = common.count(params) - per_row - lookups
  matmuls = [(per_row, b)]
  if "masked_positions" in shapes and "mlm" in params:
    mlm = common.count(params["mlm"]) + common.count(emb["word_embeddings"])
    n -= mlm
    matmuls.append((mlm, b * shapes["masked_positions"][1]))
  heads_width = config.num_heads * (config.d_model // config.num_heads)
  return common.train_flops(
      [(n, b * length), *matmuls],
      [(config.num_layers, heads_width, b * length, length, False)],
  )


def hidden_states(model: Bert, params, batch: Mapping[str, Any]) -> Array:
  """The last hidden states ``[B, L, D]`` of a tokenizer's batch (``input_ids``,
  ``attention_mask``, ``token_type_ids``)."""
  extra = {k: jnp.asarray(batch[k]) for k in ("attention_mask", "token_type_ids")
           if batch.get(k) is not None}
  out = model.apply({"params": params}, jnp.asarray(batch["input_ids"]), **extra)
  return out["last_hidden_state"]


registry.register(registry.Family(
    name="bert",
    config_cls=BertConfig,
    model_cls=Bert,
    dummy_inputs=dummy_inputs,
    train_flops=train_flops,
    tasks=("mlm_nsp", "classification", "tagging", "question_answering"),
    converters=("zoo.pretrained.bert", "zoo.pretrained.roberta", "zoo.pretrained.distilbert",
                "zoo.pretrained.electra"),
    validate=validate,
    text_encoder=registry.TextEncoder(
        token_embeddings=lambda params: params["embeddings"]["word_embeddings"]["embedding"],
        hidden_states=hidden_states,
    ),
))
