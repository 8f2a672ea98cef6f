"""BERT's config and the checks of a call's arguments.

:class:`BertConfig` (validated when built), :func:`validate` (the arguments of ``Bert.__call__``,
checked before anything is traced) and :func:`check_masked_positions` live here so that
:mod:`zoo.models.bert` holds the model itself; all are importable from there.

Shapes: B batch, L length, P masked-LM predictions per row.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from zoo.layers import attention as attn
from zoo.layers.blocks import ACTIVATIONS, Activation, NormPosition
from zoo.layers.stack import RematPolicy
from zoo.models import common

Array = jax.Array
BertHead = Literal[
    "none", "pretraining", "mlm", "sequence_classification", "token_classification",
    "question_answering", "replaced_token_detection",
]
BertPosition = Literal["learned", "sinusoidal", "rope"]
# "index": 0..L-1. "after_pad" (RoBERTa, XLM-R): real tokens count from pad_id + 1, pad
# tokens (input_ids == pad_id) sit at pad_id.
PositionIds = Literal["index", "after_pad"]
# The sequence-classification head: "linear" on the pooled [CLS] (BERT); the others are a
# dense + activation + out_proj on the first token's hidden state: "tanh" (RoBERTa, XLM-R),
# "gelu" (ELECTRA), "relu" (DistilBERT's pre_classifier + classifier).
ClassifierHead = Literal["linear", "tanh", "gelu", "relu"]
# Which Hugging Face model_type save_pretrained writes (tensor and config.json names only).
CheckpointFormat = Literal["bert", "roberta", "xlm-roberta", "distilbert", "electra"]
HEAD_KINDS = typing.get_args(BertHead)
POSITION_KINDS = typing.get_args(BertPosition)
CLASSIFIER_HEADS = typing.get_args(ClassifierHead)
MLM_HEADS = ("pretraining", "mlm")  # the heads that return "mlm_logits"


@dataclasses.dataclass(frozen=True, kw_only=True)
class BertConfig:
  """A BERT encoder and one of its task heads."""

  vocab_size: int = 30522  # WordPiece vocabulary of the released checkpoints
  max_len: int = 512  # size of the learned position table
  type_vocab_size: int = 2  # segment (sentence A / B) types; 1: token_type_ids are ignored
  token_types: bool = True  # False: no segment table (DistilBERT); token_type_ids are ignored
  embedding_size: int | None = None  # ELECTRA's embedding width E (None = d_model)
  d_model: int = 768
  num_heads: int = 12
  num_layers: int = 12
  mlp_dim: int = 3072
  pad_id: int = 0  # the default attention mask is input_ids != pad_id
  activation: Activation = "gelu"  # exact (erf) GELU, as in the original BERT
  norm_eps: float = 1e-12
  norm_position: NormPosition = "post"  # BERT is post-LN; "pre" adds a final norm
  dropout_rate: float = 0.1  # embedding, residual and (by default) classifier dropout
  attention_dropout_rate: float = 0.1
  init_std: float = 0.02  # normal(init_std) for every kernel and embedding table
  head: BertHead = "none"  # "none" = encoder + pooler
  num_labels: int = 2  # classes of the classification heads (2 for question answering)
  classifier_dropout: float | None = None  # None = dropout_rate
  pooler: bool = True  # dense + tanh on [CLS] -> "pooled"; False = HF add_pooling_layer=False
  position: BertPosition = "learned"
  position_ids: PositionIds = "index"  # how default positions are counted (see PositionIds)
  classifier_head: ClassifierHead = "linear"  # the sequence-classification head's layout
  checkpoint_format: CheckpointFormat = "bert"  # the model_type save_pretrained writes
  scan_layers: bool = False  # nn.scan over layers (fast compile for deep models)
  remat_policy: RematPolicy = "none"
  attention_impl: attn.Implementation | None = None
  dtype: Any = jnp.float32  # compute dtype
  param_dtype: Any = jnp.float32  # storage dtype

  def __post_init__(self):
    common.check_fields(self)  # types and ranges of every field, from the annotations
    if self.d_model % self.num_heads:
      raise ValueError(
          f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}; "
          "change one of them."
      )
    self._check_head()
    if self.position not in POSITION_KINDS:
      raise ValueError(f"position must be one of {POSITION_KINDS}; got {self.position!r}.")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}; got {self.activation!r}.")
    for name in ("vocab_size", "max_len", "type_vocab_size", "num_layers", "num_labels"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}.")
    for name in ("dropout_rate", "attention_dropout_rate", "classifier_dropout"):
      rate = getattr(self, name)
      if rate is not None and not 0.0 <= rate < 1.0:
        raise ValueError(f"{name} must be in [0, 1); got {rate}.")
    if not 0 <= self.pad_id < self.vocab_size:
      raise ValueError(f"pad_id={self.pad_id} is outside the vocabulary [0, {self.vocab_size}).")
    common.check_stack_options(self.scan_layers, self.remat_policy)
    self.block()  # validates heads, activation, norm position

  def _check_head(self):
    if self.head not in HEAD_KINDS:
      raise ValueError(f"head must be one of {HEAD_KINDS}; got {self.head!r}.")
    reads_pooled = self.head == "pretraining" or (
        self.head == "sequence_classification" and self.classifier_head == "linear")
    if not self.pooler and reads_pooled:
      raise ValueError(f"head={self.head!r} reads the pooled [CLS] output; it needs pooler=True.")
    if self.d_embed != self.d_model and self.head in MLM_HEADS:
      raise ValueError(
          f"head={self.head!r} ties its decoder to the word embeddings, which have "
          f"embedding_size={self.embedding_size} != d_model={self.d_model} (ELECTRA's generator "
          "head is not implemented); leave embedding_size at None or use another head."
      )
    if self.position_ids == "after_pad" and self.position != "learned":
      raise ValueError(
          f"position_ids='after_pad' indexes a learned position table; got position="
          f"{self.position!r}. Use position='learned' or position_ids='index'."
      )
    if self.head == "question_answering" and self.num_labels != 2:
      raise ValueError(
          f"head='question_answering' has two outputs per token (span start and end); got "
          f"num_labels={self.num_labels}. Leave num_labels at 2."
      )

  @property
  def d_embed(self) -> int:
    """The width of the embedding tables (``embedding_size``, default ``d_model``)."""
    return self.d_model if self.embedding_size is None else self.embedding_size

  @property
  def longest_input(self) -> int:
    """The longest ``input_ids`` the learned position table indexes."""
    return self.max_len - (self.pad_id + 1 if self.position_ids == "after_pad" else 0)

  def block(self):
    return common.block_config(self, use_rope=self.position == "rope")


def validate(config: BertConfig, inputs: Mapping[str, Any]) -> None:
  """Check the arguments of a :class:`Bert` call before any computation.

  Ids and positions are range-checked where their values are concrete; under ``jit`` only
  shapes are.

  Args:
    config: the model's config.
    inputs: the call's arguments by name: ``input_ids`` and, optionally, ``token_type_ids``,
      ``attention_mask``, ``positions``, ``segment_ids`` and ``masked_positions``; other keys
      are ignored.

  Raises:
    ValueError: naming the argument and the numbers that disagree.
  """
  input_ids = inputs["input_ids"]
  common.check_token_ids("input_ids", input_ids, config.vocab_size)
  shape = tuple(input_ids.shape)
  for name in ("token_type_ids", "attention_mask", "positions", "segment_ids"):
    x = inputs.get(name)
    if x is not None and tuple(jnp.shape(x)) != shape:
      raise ValueError(
          f"{name} must have the shape of input_ids [batch, length] = {shape}; got "
          f"{tuple(jnp.shape(x))}."
      )
  if inputs.get("token_type_ids") is not None and reads_token_types(config):
    common.check_token_ids("token_type_ids", inputs["token_type_ids"], config.type_vocab_size)
  if config.position == "learned":
    if config.position_ids == "after_pad" and shape[1] > config.longest_input:
      raise ValueError(
          f"input_ids has length {shape[1]} but the model reads at most {config.longest_input} "
          f"tokens (max_len={config.max_len} learned positions counted from pad_id + 1 = "
          f"{config.pad_id + 1}, position_ids='after_pad'); truncate the input."
      )
    common.check_length("input_ids", shape[1], config.longest_input)
    positions = inputs.get("positions")
    if positions is not None and common.is_concrete(positions) and np.size(positions):
      lo, hi = int(np.min(positions)), int(np.max(positions))
      if lo < 0 or hi >= config.max_len:
        raise ValueError(
            f"positions hold values in [{lo}, {hi}] but the learned position table has "
            f"max_len={config.max_len} rows (valid 0..{config.max_len - 1})."
        )
  if inputs.get("masked_positions") is not None:
    check_masked_positions(config, inputs["masked_positions"], shape)


def reads_token_types(config: BertConfig) -> bool:
  """Whether ``token_type_ids`` change the output (a segment table of more than one row)."""
  return config.token_types and config.type_vocab_size > 1


def check_masked_positions(config: BertConfig, positions: Array, shape: tuple[int, int]) -> None:
  """``masked_positions`` must be integer ``[B, P]`` in ``[0, L)``, for an MLM head."""
  if config.head not in MLM_HEADS:
    raise ValueError(
        f"masked_positions is read by the masked-LM head only; this model has "
        f"head={config.head!r}. Leave masked_positions out, or use head='pretraining' / 'mlm'."
    )
  common.check_rank("masked_positions", positions, 2, "[batch, predictions] integer positions")
  dtype = np.asarray(positions).dtype if common.is_concrete(positions) else positions.dtype
  if not jnp.issubdtype(dtype, jnp.integer):
    raise ValueError(f"masked_positions must be integer positions; got dtype {dtype}.")
  b, length = shape
  if jnp.shape(positions)[0] != b:
    raise ValueError(
        f"masked_positions has {jnp.shape(positions)[0]} rows but input_ids has {b}; give one row "
        "of positions per example."
    )
  if common.is_concrete(positions) and np.size(positions):
    values = np.asarray(positions)
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= length:
      raise ValueError(
          f"masked_positions hold values in [{lo}, {hi}] but input_ids has length {length} "
          f"(valid 0..{length - 1}); pad unused slots with 0 and give them weight 0."
      )
