"""BART's additions to the encoder-decoder Transformer: the EOS-pooled sentence classifier and
the conventions that turn labels into decoder inputs.

Shapes: B batch, T target length, D model width, F the classifier's inner width (= D),
C classes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from zoo import sharding as sh
from zoo.layers.dense import Einsum
from zoo.layers.dropout import Dropout
from zoo.models.transformer_config import TransformerConfig

Array = jax.Array


class ClassificationHead(nn.Module):
  """BART's sentence classifier: dropout, dense + tanh, dropout, ``out_proj`` to the labels."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, hidden_BTD: Array, index_B: Array, deterministic: bool) -> Array:
    cfg = self.config
    x_BD = jnp.take_along_axis(hidden_BTD, index_B[:, None, None], axis=1)[:, 0]
    dense = lambda shape, axes, name: Einsum(  # noqa: E731
        shape, axes, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        kernel_init=nn.initializers.normal(cfg.init_std or 0.02), name=name,
    )
    drop = Dropout(cfg.classifier_dropout_rate)
    x_BD = drop(x_BD, deterministic=deterministic)
    x_BD = jnp.tanh(dense((cfg.d_model, cfg.d_model), (sh.EMBED, sh.MLP), "dense")(
        "BD,DF->BF", x_BD))
    x_BD = drop(x_BD, deterministic=deterministic)
    logits_BC = dense((cfg.d_model, cfg.num_labels), (sh.MLP, sh.CLASSES), "out_proj")(
        "BF,FC->BC", x_BD)
    return logits_BC.astype(jnp.float32)


def last_eos(config: TransformerConfig, src_ids: Array) -> Array:
  """``[B]`` index of each row's last ``eos_id`` (0 for a row without one)."""
  s = src_ids.shape[1]
  return jnp.max(jnp.where(src_ids == config.eos_id, jnp.arange(s)[None], 0), axis=1)


def shift_right(config: TransformerConfig, ids: Array) -> Array:
  """Decoder inputs from target ids, as transformers makes them from ``labels``.

  ``label_shift="start_token"`` (BART, Marian): ``[decoder_start_id, ids[:-1]]``;
  ``"wrap_last"`` (mBART): each row's last non-pad token (its language code) moves to the
  front. Negative ids (ignored labels) become ``pad_id``.
  """
  ids = jnp.where(ids < 0, config.pad_id, ids).astype(jnp.int32)
  if config.label_shift == "wrap_last":
    last = jnp.sum(ids != config.pad_id, axis=1) - 1
    first = jnp.take_along_axis(ids, jnp.maximum(last, 0)[:, None], axis=1)
  else:
    if config.decoder_start_id < 0:
      raise ValueError("shift_right needs decoder_start_id (or label_shift='wrap_last').")
    first = jnp.full((ids.shape[0], 1), config.decoder_start_id, jnp.int32)
  return jnp.concatenate([first, ids[:, :-1]], axis=1)
