"""The encoder-decoder Transformer's config and the checks of a call's arguments.

:class:`TransformerConfig` (validated when built) and :func:`validate` (the arguments of
``Transformer.__call__``, ``encode`` and ``decode``, checked before anything is traced) live
here so that :mod:`zoo.models.transformer` holds the model itself; both are importable from
there too.

Shapes: B batch, S source length, T target length, D model width, V vocabulary.
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
from zoo.layers.blocks import Activation, NormKind
from zoo.layers.positional import SinusoidLayout
from zoo.layers.stack import RematPolicy
from zoo.models import common

Array = jax.Array
Position = Literal["sinusoidal", "learned", "rope"]
NormPosition = Literal["post", "pre"]
Head = Literal["lm", "sequence_classification"]
LabelShift = Literal["start_token", "wrap_last"]
# A token id field: 0 is a valid value and -1 means "none" (checked against the vocabulary in
# __post_init__; the run config's command line types it as an int).
TokenId = typing.NewType("TokenId", int)
NO_TOKEN = -1


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
  head: Head = "lm"  # "sequence_classification": BART's classifier on the last EOS's state
  num_labels: int = 2  # classes of the sequence-classification head
  classifier_dropout_rate: float = 0.0  # around the classifier's dense layer
  eos_id: TokenId = NO_TOKEN  # end of sequence (-1: none): decoding's stop, the classifier's token
  decoder_start_id: TokenId = NO_TOKEN  # first decoder input (-1: none; BART: EOS; Marian: pad)
  label_shift: LabelShift = "start_token"  # labels -> decoder inputs; mBART: "wrap_last"
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
    self._check_specials()
    common.check_stack_options(self.scan_layers, self.remat_policy)
    self.block()  # validates heads, activation, norm and norm_position

  def _check_specials(self) -> None:
    for name in ("eos_id", "decoder_start_id"):
      value = getattr(self, name)
      if (isinstance(value, bool) or not isinstance(value, int | np.integer)
          or not NO_TOKEN <= value < self.tgt_vocab):
        raise ValueError(
            f"{name}={value!r} must be -1 (none) or a token id in [0, {self.tgt_vocab}) (the "
            "target vocabulary)."
        )
    if self.head == "sequence_classification" and self.eos_id == NO_TOKEN:
      raise ValueError(
          "head='sequence_classification' pools the state at each row's last EOS; set eos_id "
          "(BART: 2)."
      )
    if self.label_shift == "start_token" and self.decoder_start_id == NO_TOKEN and (
        self.head == "sequence_classification"):
      raise ValueError(
          "head='sequence_classification' feeds the decoder the source shifted right after "
          "decoder_start_id; set decoder_start_id (BART: 2) or label_shift='wrap_last'."
      )

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
