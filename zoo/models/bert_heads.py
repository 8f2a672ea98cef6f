"""BERT's task heads beyond the original paper's: the two-layer sequence classifier of RoBERTa,
XLM-R, ELECTRA and DistilBERT, and ELECTRA's replaced-token-detection head.

Shapes: B batch, L length, D width, C classes (``num_labels``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from zoo import sharding as sh
from zoo.layers.blocks import ACTIVATIONS
from zoo.layers.dense import Einsum
from zoo.layers.dropout import Dropout
from zoo.models.bert_config import BertConfig

Array = jax.Array


def dense(cfg: BertConfig, features: int, axes: tuple[str, str], name: str) -> Einsum:
  """A ``[D, features]`` dense layer with BERT's normal(init_std) kernels."""
  return Einsum(
      (cfg.d_model, features),
      axes,
      dtype=cfg.dtype,
      param_dtype=cfg.param_dtype,
      kernel_init=nn.initializers.normal(cfg.init_std),
      name=name,
  )


_CLASSIFIER_ACTIVATIONS = {"tanh": jnp.tanh, "gelu": ACTIVATIONS["gelu"], "relu": nn.relu}


class ClassificationHead(nn.Module):
  """``dense`` + activation + ``out_proj`` on the first token: RoBERTa / XLM-R (tanh), ELECTRA
  (exact GELU) and DistilBERT (ReLU; ``pre_classifier`` + ``classifier``, no dropout before)."""

  config: BertConfig

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    """``[B, L, D]`` -> ``[B, C]`` float32 logits."""
    cfg = self.config
    rate = cfg.dropout_rate if cfg.classifier_dropout is None else cfg.classifier_dropout
    h_BD = x[:, 0]
    if cfg.classifier_head != "relu":
      h_BD = Dropout(rate)(h_BD, deterministic=deterministic)
    h_BD = dense(cfg, cfg.d_model, (sh.EMBED, sh.MLP), "dense")("BD,DF->BF", h_BD)
    h_BD = Dropout(rate)(_CLASSIFIER_ACTIVATIONS[cfg.classifier_head](h_BD),
                         deterministic=deterministic)
    out_proj = dense(cfg, cfg.num_labels, (sh.EMBED, sh.CLASSES), "out_proj")
    return out_proj("BD,DC->BC", h_BD).astype(jnp.float32)


class DiscriminatorHead(nn.Module):
  """ELECTRA's replaced-token detection: ``dense`` + activation + ``dense_prediction`` -> one
  logit per token (positive = replaced)."""

  config: BertConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """``[B, L, D]`` -> ``[B, L]`` float32 logits."""
    cfg = self.config
    h = dense(cfg, cfg.d_model, (sh.EMBED, sh.MLP), "dense")("BLD,DF->BLF", x)
    h = ACTIVATIONS[cfg.activation](h)
    logits_BL1 = dense(cfg, 1, (sh.EMBED, sh.CLASSES), "dense_prediction")("BLD,DC->BLC", h)
    return logits_BL1[..., 0].astype(jnp.float32)
