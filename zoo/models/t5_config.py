"""T5's config, its feed-forward names, its relative-position buckets and the checks of a call's
arguments.

:class:`T5Config` (validated when built), :data:`FEED_FORWARD` (Hugging Face's
``feed_forward_proj`` strings <-> zoo's ``activation`` + ``gated_mlp``),
:func:`relative_position_bucket` (the bucket arithmetic whose limits the config checks) and
:func:`validate` (the arguments of ``T5.__call__``, ``encode`` and ``decode``, checked before
anything is traced) live here so that :mod:`zoo.models.t5` holds the model itself; all are
importable from there.

Shapes: B batch, S source length, T target length, D model width, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from zoo.layers import attention as attn
from zoo.layers.blocks import Activation, BlockConfig
from zoo.layers.stack import RematPolicy
from zoo.models import common

Array = jax.Array
# A token id may be 0 (T5's decoder start is its pad id); range-checked against the vocabulary
# in __post_init__ (common.check_fields holds plain ints to >= 1).
TokenId = typing.NewType("TokenId", int)

# Hugging Face ``feed_forward_proj`` -> (activation, gated_mlp). "gated-gelu" is the tanh GELU
# (transformers maps it to "gelu_new"); a plain "gelu" is the exact (erf) one.
FEED_FORWARD: dict[str, tuple[str, bool]] = {
    "relu": ("relu", False),  # T5 1.0
    "gelu": ("gelu", False),
    "gelu_new": ("gelu_tanh", False),
    "silu": ("silu", False),
    "gated-relu": ("relu", True),
    "gated-gelu": ("gelu_tanh", True),  # T5 v1.1, Flan-T5, mT5
    "gated-silu": ("silu", True),
}


def from_feed_forward_proj(name: str) -> dict[str, Any]:
  """``{"activation": ..., "gated_mlp": ...}`` of a Hugging Face ``feed_forward_proj``."""
  if name not in FEED_FORWARD:
    raise ValueError(
        f"feed_forward_proj={name!r} is not a T5 feed-forward zoo builds; choose one of "
        f"{tuple(FEED_FORWARD)} (or set activation and gated_mlp directly)."
    )
  activation, gated = FEED_FORWARD[name]
  return {"activation": activation, "gated_mlp": gated}


def feed_forward_proj(config: T5Config) -> str:
  """The Hugging Face ``feed_forward_proj`` of a config (a ValueError when none names it)."""
  for name, pair in FEED_FORWARD.items():
    if pair == (config.activation, config.gated_mlp):
      return name
  raise ValueError(
      f"activation={config.activation!r} with gated_mlp={config.gated_mlp} has no Hugging Face "
      f"feed_forward_proj name; those are {tuple(FEED_FORWARD)}."
  )


def relative_position_bucket(
    relative_position: np.ndarray, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> np.ndarray:
  """T5's bucket of each relative position ``key - query`` (Mesh TensorFlow's, as Hugging Face).

  Half of a direction's buckets hold one distance each; the others are log-spaced up to
  ``max_distance``, beyond which distances share the last bucket. Bidirectional buckets give
  half of ``num_buckets`` to keys after the query; causal ones clip keys after the query to 0.
  Computed in numpy float32 on the host, as transformers does in torch: the log's rounding
  decides buckets at the boundaries, and XLA's ``log`` rounds differently at some of them.

  Args:
    relative_position: integer array of ``key_position - query_position``.
    bidirectional: encoder (True) or causal decoder (False) buckets.
    num_buckets: buckets of the table (both directions together when bidirectional).
    max_distance: the distance from which all share the last bucket.

  Returns:
    int32 array of the same shape, values in ``[0, num_buckets)``.
  """
  rel = np.asarray(relative_position, np.int64)
  n, out = num_buckets, np.zeros(rel.shape, np.int64)
  if bidirectional:
    n //= 2
    out += (rel > 0) * n
    rel = np.abs(rel)
  else:
    rel = -np.minimum(rel, 0)
  max_exact = n // 2
  with np.errstate(divide="ignore"):  # log(0) at distance 0, which is an exact bucket
    scaled = (
        np.log(rel.astype(np.float32) / np.float32(max_exact))
        / np.float32(math.log(max_distance / max_exact))
        * np.float32(n - max_exact)
    )
  large = np.minimum(max_exact + np.where(rel < max_exact, 0, scaled).astype(np.int64), n - 1)
  return (out + np.where(rel < max_exact, rel, large)).astype(np.int32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class T5Config:
  """T5 (Raffel et al. 2020); defaults are t5-small, the 1.0 layout."""

  vocab_size: int = 32128  # SentencePiece pieces + 100 sentinels, padded to a multiple of 128
  d_model: int = 512
  num_heads: int = 8
  head_dim: int = 64  # d_kv: per-head width, independent of d_model
  mlp_dim: int = 2048  # d_ff
  num_encoder_layers: int = 6  # num_layers
  num_decoder_layers: int = 6  # num_decoder_layers (ignored when encoder_only)
  relative_attention_num_buckets: int = 32  # rows of each relative-position bias table
  relative_attention_max_distance: int = 128  # distances from here on share the last bucket
  relative_bias_per_layer: bool = False  # umT5: a table in every layer, not one per stack
  activation: Activation = "relu"  # "relu" (1.0); "gelu_tanh" + gated_mlp is v1.1 "gated-gelu"
  gated_mlp: bool = False  # wo(act(gate(x)) * wi(x)); HF wi_0 = gate, wi_1 = wi
  norm_eps: float = 1e-6  # layer_norm_epsilon of the RMS norms
  dropout_rate: float = 0.1  # embeddings, sublayer outputs, MLP hidden, attention weights, stacks
  tie_word_embeddings: bool = True  # logits against the shared table; False = an lm_head
  scale_decoder_outputs: bool | None = None  # decoder output * d_model**-0.5; None = tied
  initializer_factor: float = 1.0  # multiplies every init std (HF initializer_factor)
  pad_id: int = 0  # source padding (hidden from attention)
  eos_id: TokenId = 1  # end of sequence
  decoder_start_id: TokenId = 0  # first decoder input (T5: the pad id)
  encoder_only: bool = False  # T5EncoderModel: no decoder or lm_head; __call__ gives [B, S, D]
  attention_impl: attn.Implementation | None = None
  scan_layers: bool = False  # nn.scan over layers (fast compile for deep models)
  remat_policy: RematPolicy = "none"
  dtype: Any = jnp.float32  # compute dtype
  param_dtype: Any = jnp.float32  # storage dtype

  def __post_init__(self):
    common.check_fields(self)  # types and ranges of every field, from the annotations
    if not self.initializer_factor > 0:
      raise ValueError(f"initializer_factor must be > 0 (1.0 = T5's init); got "
                       f"{self.initializer_factor!r}.")
    for name in ("pad_id", "eos_id", "decoder_start_id"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < self.vocab_size:
        raise ValueError(
            f"T5Config.{name}={value!r} must be a token id in [0, vocab_size={self.vocab_size})."
        )
    self._check_buckets()
    common.check_stack_options(self.scan_layers, self.remat_policy)
    self.block()  # validates heads and activation

  def _check_buckets(self) -> None:
    buckets, distance = self.relative_attention_num_buckets, self.relative_attention_max_distance
    if buckets < 4:
      raise ValueError(
          f"relative_attention_num_buckets={buckets} is too few: it must be >= 4 (T5 uses 32). "
          "The encoder's bidirectional buckets give half to each direction, and each half "
          "needs at least one exact bucket before the log-spaced ones (fewer divide by zero)."
      )
    # Distances below max_exact get a bucket each; the log-spaced buckets cover max_exact up
    # to max_distance, so max_distance must be larger (else log(max_distance / max_exact) <= 0).
    max_exact = buckets // 4 if self.encoder_only else buckets // 2
    if distance <= max_exact:
      raise ValueError(
          f"relative_attention_max_distance={distance} must exceed the exact-bucket range "
          f"{max_exact} (relative_attention_num_buckets={buckets} // "
          f"{4 if self.encoder_only else 2}); T5 uses 128 with 32 buckets."
      )

  @property
  def scales_outputs(self) -> bool:
    """Whether the decoder output is multiplied by ``d_model**-0.5`` before the logits."""
    if self.scale_decoder_outputs is None:
      return self.tie_word_embeddings
    return self.scale_decoder_outputs

  def block(self) -> BlockConfig:
    """The blocks: pre-RMS-norm, no biases, unscaled logits, T5's fan-in init.

    Kernels start at normal(``initializer_factor * d_model**-0.5``) with the query's std times
    ``head_dim**-0.5`` (T5 folds 1/sqrt(H) into the query) and ``wo``'s equal to HF's
    ``mlp_dim**-0.5``; the attention ``out`` kernel shares ``wo``'s scale (HF: ``(N H)**-0.5``).
    """
    d = self.d_model
    return common.block_config(
        self,
        norm="rmsnorm",
        norm_position="pre",
        use_bias=False,
        attention_scale=1.0,
        attention_dropout_rate=self.dropout_rate,
        mlp_dropout_rate=self.dropout_rate,
        init_std=self.initializer_factor * d**-0.5,
        query_init_scale=self.head_dim**-0.5,
        residual_init_scale=(d / self.mlp_dim) ** 0.5,
    )


def _check_embeds(config: T5Config, name: str, embeds: Array, shape: tuple[int, int]) -> None:
  common.check_rank(name, embeds, 3, "[batch, length, d_model]")
  if tuple(embeds.shape) != (*shape, config.d_model):
    raise ValueError(
        f"{name} has shape {tuple(embeds.shape)}; expected [B, L, D] = "
        f"{[*shape, config.d_model]} (the ids' [B, L] and d_model)."
    )


def _check_decoder(config: T5Config) -> None:
  if config.encoder_only:
    raise ValueError(
        "this T5 is encoder-only (encoder_only=True): it has no decoder. Call it on src_ids "
        "alone for the encoder's hidden states, or build it with encoder_only=False."
    )


def validate(config: T5Config, inputs: Mapping[str, Any]) -> None:
  """Check the arguments of a :class:`T5` call, ``encode`` or ``decode``.

  Runs before any computation. Ids are range-checked where their values are concrete; under
  ``jit`` only shapes are.

  Args:
    config: the model's config.
    inputs: the arguments by name of ``__call__`` (``src_ids``, ``tgt_in_ids``), of ``encode``
      (``src_ids``, ``src_embeds``) or of ``decode`` (``tgt_ids`` / ``tgt_embeds``,
      ``encoded``, ``src_ids``). A mapping with ``encoded`` is checked as the decoder's
      arguments; other keys are ignored.

  Raises:
    ValueError: naming the argument and the numbers that disagree.
  """
  get = inputs.get
  if get("tgt_in_ids") is not None:  # the target first: it fails before the encoder runs
    _check_decoder(config)
    common.check_token_ids("tgt_in_ids", inputs["tgt_in_ids"], config.vocab_size)
  src_ids = inputs["src_ids"]
  common.check_token_ids("src_ids", src_ids, config.vocab_size)
  if "encoded" not in inputs:  # the encoder's arguments
    if get("src_embeds") is not None:
      _check_embeds(config, "src_embeds", inputs["src_embeds"], tuple(src_ids.shape))
    return

  _check_decoder(config)
  tgt_ids, tgt_embeds, encoded = get("tgt_ids"), get("tgt_embeds"), inputs["encoded"]
  if tgt_ids is None and tgt_embeds is None:
    raise ValueError("decode needs tgt_ids or tgt_embeds.")
  if tgt_ids is not None:
    common.check_token_ids("tgt_ids", tgt_ids, config.vocab_size)
  if tgt_embeds is not None:
    shape = tuple(tgt_ids.shape) if tgt_ids is not None else tuple(tgt_embeds.shape[:2])
    _check_embeds(config, "tgt_embeds", tgt_embeds, shape)
  b = tgt_ids.shape[0] if tgt_ids is not None else tgt_embeds.shape[0]
  common.check_rank("encoded", encoded, 3, "[batch, source_length, d_model] (encode output)")
  if encoded.shape[:2] != src_ids.shape or encoded.shape[0] != b:
    raise ValueError(
        f"encoded {tuple(encoded.shape)} must be [B, S, D] matching src_ids "
        f"{tuple(src_ids.shape)} and the target batch {b}."
    )
