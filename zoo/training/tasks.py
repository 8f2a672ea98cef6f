"""Losses and metrics per task: what a batch means to a model, and how it is scored.

A task turns a batch (the layout agreed with ``zoo.data``) into model inputs, and model
outputs into *statistics*: ``name -> (sum, count)`` pairs. Sums and counts, not means, so
that micro-batches, devices and evaluation batches combine exactly: the mean over a padded
batch is ``sum(loss * weight) / sum(weight)``, never a mean of means. Labels equal to
:data:`IGNORE_INDEX` (and rows padded onto a short final evaluation batch) have weight 0.

Shapes: B batch, L length, S source length, T target length, V vocabulary, C classes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from zoo.training import eval_metrics

Array = jax.Array
Batch = dict[str, Array]
Stats = dict[str, tuple[Array, Array]]

IGNORE_INDEX = -100  # label value that does not count (padding, unselected MLM positions)

TASKS = ("lm", "translation", "mlm_nsp", "classification", "tagging", "image_classification")


def cross_entropy(
    logits: Array, labels: Array, label_smoothing: float = 0.0
) -> tuple[Array, Array, Array]:
  """Per-example cross entropy in float32.

  Args:
    logits: ``[..., V]`` logits (any float dtype; upcast to float32).
    labels: ``[...]`` int labels; :data:`IGNORE_INDEX` entries give 0 and must be masked by
      the caller's weights.
    label_smoothing: epsilon of Szegedy et al. 2016: the target is ``(1 - eps) * one_hot +
      eps / V``.

  Returns:
    ``(loss, nll, correct)``, each ``[...]``: the (smoothed) training loss, the plain
    negative log-likelihood of the label, and whether the argmax is the label.
  """
  logits = logits.astype(jnp.float32)
  safe = jnp.where(labels == IGNORE_INDEX, 0, labels).astype(jnp.int32)
  loss, nll = _smoothed_nll(logits, safe, float(label_smoothing))
  correct = (jnp.argmax(logits, axis=-1) == safe).astype(jnp.float32)
  return loss, nll, correct


# The gradient written out, ``softmax - target``, is one element-wise pass over the [..., V]
# logits. Left to autodiff, log_softmax + take_along_axis backpropagates through a full
# [..., V] log-probability array plus a scatter, which XLA:CPU lowers to transposed copies of
# the logits: with GPT-2's 50k vocabulary that was a fifth of the train step
# (benchmarks/profile.py).
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _smoothed_nll(logits: Array, labels: Array, eps: float) -> tuple[Array, Array]:
  return _smoothed_nll_fwd(logits, labels, eps)[0]


def _smoothed_nll_fwd(logits, labels, eps):
  lse = jax.nn.logsumexp(logits, axis=-1)
  label_logit = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  nll = lse - label_logit
  loss = nll
  if eps:  # -mean(log p) = lse - mean(logits)
    loss = (1.0 - eps) * nll + eps * (lse - jnp.mean(logits, axis=-1))
  return (loss, nll), (logits, labels, lse)


def _smoothed_nll_bwd(eps, res, cotangents):
  logits, labels, lse = res
  g_loss, g_nll = cotangents  # custom_vjp passes zeros, never None, for an unused output
  probs = jnp.exp(logits - lse[..., None])
  one_hot = jnp.arange(logits.shape[-1], dtype=labels.dtype) == labels[..., None]
  # d loss = softmax - (1 - eps) one_hot - eps / V;  d nll = softmax - one_hot.
  g_total, g_hot = g_loss + g_nll, (1.0 - eps) * g_loss + g_nll
  d = probs * g_total[..., None] - jnp.where(one_hot, g_hot[..., None], 0.0)
  if eps:
    d = d - (eps / logits.shape[-1]) * g_loss[..., None]
  return d, None


_smoothed_nll.defvjp(_smoothed_nll_fwd, _smoothed_nll_bwd)


def weighted(values: Array, weights: Array) -> tuple[Array, Array]:
  """``(sum(values * weights), sum(weights))`` in float32: the parts of a padding-aware mean."""
  weights = weights.astype(jnp.float32)
  return jnp.sum(values.astype(jnp.float32) * weights), jnp.sum(weights)


def label_weights(labels: Array, weights: Array | None = None) -> Array:
  """Float32 weights: 0 where ``labels == IGNORE_INDEX``, times ``weights`` if given."""
  w = (labels != IGNORE_INDEX).astype(jnp.float32)
  return w if weights is None else w * weights.astype(jnp.float32)


def means(stats: dict[str, tuple[Any, Any]]) -> dict[str, float]:
  """``name -> sum / count`` (0 where nothing counted), plus perplexities of the nll terms."""
  out = {}
  for name, (total, count) in stats.items():
    out[name] = float(total) / float(count) if float(count) > 0 else 0.0
  for name in list(out):
    if name == "nll" or name.endswith("_nll"):
      # Capped so a diverging run reports inf-free numbers in TensorBoard.
      out[name.replace("nll", "perplexity")] = math.exp(min(out[name], 50.0))
  return out


@dataclasses.dataclass(frozen=True)
class Task:
  """Base task. Subclasses define ``inputs``, ``loss_weights`` and ``stats``.

  Attributes:
    name: one of :data:`TASKS`.
    label_smoothing: epsilon for the token / class cross entropies.
  """

  name: str
  label_smoothing: float = 0.0

  # Stats whose means add up to the training loss, and the throughput unit.
  loss_terms: ClassVar[tuple[str, ...]] = ("loss",)
  unit: ClassVar[str] = "tokens"

  def inputs(self, batch: Batch) -> tuple[tuple, dict]:
    """Model positional and keyword arguments."""
    raise NotImplementedError

  def loss_weights(self, batch: Batch) -> dict[str, Array]:
    """``term -> weights`` of each loss term; their sums normalise the loss of a full batch."""
    raise NotImplementedError

  def stats(self, outputs: Any, batch: Batch) -> Stats:
    """``name -> (sum, count)`` from model outputs."""
    raise NotImplementedError

  def units(self, shapes: dict[str, tuple[int, ...]]) -> int:
    """Throughput units (tokens or images) in a batch of these array shapes."""
    b, length = shapes["input_ids"]
    return b * length

  def apply(self, apply_fn, params, batch: Batch, *, rng: Array | None, train: bool) -> Any:
    """Run the model on a batch (dropout on when ``train``)."""
    args, kwargs = self.inputs(batch)
    rngs = {"dropout": rng} if train and rng is not None else None
    return apply_fn({"params": params}, *args, deterministic=not train, rngs=rngs, **kwargs)

  def model_overrides(self, info: dict) -> dict:
    """Model config fields implied by the task and the data (vocabulary, labels, head)."""
    return {}

  def predictions(self, outputs: Any, batch: Batch) -> dict[str, Array] | None:
    """Arrays that evaluation collects on the host for :meth:`host_metrics` (None: none)."""
    return None

  def host_metrics(self, collected: dict[str, np.ndarray], sums: dict[str, Any], info: dict):
    """Metrics over the whole evaluation from the collected predictions (and stat sums)."""
    return {}

  def _token_stats(self, logits: Array, targets: Array, weights: Array, prefix: str = "") -> Stats:
    loss, nll, correct = cross_entropy(logits, targets, self.label_smoothing)
    out = {f"{prefix}loss": weighted(loss, weights)}
    out[f"{prefix}nll"] = weighted(nll, weights)
    out[f"{prefix}accuracy"] = weighted(correct, weights)
    return out


def _vocab(info: dict) -> dict:
  out = {}
  if info.get("vocab_size"):
    out["vocab_size"] = int(info["vocab_size"])
  return out


def _labels(info: dict) -> int | None:
  n = info.get("num_labels", info.get("num_classes"))
  return None if n is None else int(n)


class LanguageModeling(Task):
  """Causal LM: predict ``targets`` (the next token) at every weighted position."""

  def inputs(self, batch):
    kwargs = {k: batch[k] for k in ("positions", "segment_ids") if k in batch}
    return (batch["input_ids"],), kwargs

  def loss_weights(self, batch):
    return {"loss": label_weights(batch["targets"], batch["weights"])}

  def stats(self, outputs, batch):
    return self._token_stats(outputs, batch["targets"], self.loss_weights(batch)["loss"])

  def model_overrides(self, info):
    return _vocab(info)

  def predictions(self, outputs, batch):
    return {"targets": batch["targets"], "weights": self.loss_weights(batch)["loss"]}

  def host_metrics(self, collected, sums, info):
    tokenizer = info.get("tokenizer")
    if tokenizer is None or "nll" not in sums:
      return {}
    num_bytes = eval_metrics.text_bytes(tokenizer, collected["targets"], collected["weights"])
    return {"bits_per_byte": eval_metrics.bits_per_byte(float(sums["nll"][0]), num_bytes)}


class Translation(Task):
  """Seq2seq with teacher forcing: ``tgt_in_ids`` in, ``tgt_out_ids`` predicted."""

  def inputs(self, batch):
    return (batch["src_ids"], batch["tgt_in_ids"]), {}

  def loss_weights(self, batch):
    return {"loss": label_weights(batch["tgt_out_ids"], batch["weights"])}

  def stats(self, outputs, batch):
    return self._token_stats(outputs, batch["tgt_out_ids"], self.loss_weights(batch)["loss"])

  def units(self, shapes):
    (b, s), (_, t) = shapes["src_ids"], shapes["tgt_in_ids"]
    return b * (s + t)

  def model_overrides(self, info):
    out = _vocab(info)
    if "pad_id" in info:
      out["pad_id"] = int(info["pad_id"])
    return out


class MaskedLMAndNSP(Task):
  """BERT pretraining: masked-token loss + next-sentence loss, each a mean over its labels."""

  loss_terms: ClassVar[tuple[str, ...]] = ("mlm_loss", "nsp_loss")

  def inputs(self, batch):
    kwargs = {k: batch[k] for k in ("token_type_ids", "attention_mask") if k in batch}
    return (batch["input_ids"],), kwargs

  def loss_weights(self, batch):
    return {
        "mlm_loss": label_weights(batch["mlm_targets"]),
        "nsp_loss": label_weights(batch["nsp_labels"]),
    }

  def stats(self, outputs, batch):
    w = self.loss_weights(batch)
    out = self._token_stats(outputs["mlm_logits"], batch["mlm_targets"], w["mlm_loss"], "mlm_")
    out.update(self._token_stats(outputs["nsp_logits"], batch["nsp_labels"], w["nsp_loss"], "nsp_"))
    del out["nsp_nll"]  # a perplexity of a yes/no question says nothing
    return out

  def model_overrides(self, info):
    out = {**_vocab(info), "head": "pretraining"}
    if "pad_id" in info:
      out["pad_id"] = int(info["pad_id"])
    return out


class Classification(Task):
  """One label per example: text (``input_ids``) or images (``images``)."""

  def inputs(self, batch):
    if "images" in batch:
      return (batch["images"],), {}
    kwargs = {k: batch[k] for k in ("token_type_ids", "attention_mask") if k in batch}
    return (batch["input_ids"],), kwargs

  def loss_weights(self, batch):
    return {"loss": label_weights(batch["labels"])}

  def stats(self, outputs, batch):
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs
    out = self._token_stats(logits, batch["labels"], self.loss_weights(batch)["loss"])
    del out["nll"]
    return out

  def predictions(self, outputs, batch):
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs
    return {"labels": batch["labels"], "preds": jnp.argmax(logits, axis=-1).astype(jnp.int32)}

  def host_metrics(self, collected, sums, info):
    keep = collected["labels"] != IGNORE_INDEX  # padded rows of a short last batch
    return {"macro_f1": eval_metrics.macro_f1(collected["labels"][keep], collected["preds"][keep])}

  def model_overrides(self, info):
    out = {**_vocab(info), "head": "sequence_classification"}
    if _labels(info):
      out["num_labels"] = _labels(info)
    if "pad_id" in info:
      out["pad_id"] = int(info["pad_id"])
    return out


class ImageClassification(Classification):
  """ViT-style classification of ``images [B, H, W, C]``."""

  unit: ClassVar[str] = "images"

  def units(self, shapes):
    return shapes["images"][0]

  def model_overrides(self, info):
    out = {}
    if _labels(info):
      out["num_classes"] = _labels(info)
    for key in ("image_size", "num_channels"):
      if info.get(key):
        out[key] = int(info[key])
    return out


class Tagging(Task):
  """One label per token (named entities, parts of speech); padding labels are ignored."""

  def inputs(self, batch):
    kwargs = {k: batch[k] for k in ("token_type_ids", "attention_mask") if k in batch}
    return (batch["input_ids"],), kwargs

  def loss_weights(self, batch):
    return {"loss": label_weights(batch["labels"])}

  def stats(self, outputs, batch):
    out = self._token_stats(outputs["logits"], batch["labels"], self.loss_weights(batch)["loss"])
    del out["nll"]
    return out

  def predictions(self, outputs, batch):
    preds = jnp.argmax(outputs["logits"], axis=-1).astype(jnp.int32)
    return {"labels": batch["labels"], "preds": preds}

  def host_metrics(self, collected, sums, info):
    names = info.get("label_names")
    if not names:
      return {}
    gold, pred = [], []
    for labels, preds in zip(collected["labels"], collected["preds"], strict=True):
      keep = labels != IGNORE_INDEX  # the first piece of each word; specials and padding not
      if keep.any():
        gold.append(labels[keep].tolist())
        pred.append(preds[keep].tolist())
    return eval_metrics.span_scores(gold, pred, names)

  def model_overrides(self, info):
    out = {**_vocab(info), "head": "token_classification"}
    if _labels(info):
      out["num_labels"] = _labels(info)
    if "pad_id" in info:
      out["pad_id"] = int(info["pad_id"])
    return out


_CLASSES = {
    "lm": LanguageModeling,
    "translation": Translation,
    "mlm_nsp": MaskedLMAndNSP,
    "classification": Classification,
    "tagging": Tagging,
    "image_classification": ImageClassification,
}


def get_task(name: str, label_smoothing: float = 0.0) -> Task:
  """The task called ``name`` (one of :data:`TASKS`)."""
  if name not in _CLASSES:
    raise ValueError(f"unknown task {name!r}; known tasks: {TASKS}.")
  if not 0.0 <= label_smoothing < 1.0:
    raise ValueError(f"label_smoothing must be in [0, 1); got {label_smoothing}.")
  return _CLASSES[name](name=name, label_smoothing=float(label_smoothing))


def pad_batch(batch: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
  """Pad a short (final evaluation) batch to ``rows`` rows that count for nothing.

  Labels and targets are padded with :data:`IGNORE_INDEX`, weights and everything else with
  0, so padded rows drop out of every padding-aware mean.
  """
  out = {}
  for key, x in batch.items():
    x = np.asarray(x)
    missing = rows - x.shape[0]
    if missing <= 0:
      out[key] = x
      continue
    ignore = key.endswith(("labels", "targets", "_out_ids"))
    fill = IGNORE_INDEX if ignore and np.issubdtype(x.dtype, np.integer) else 0
    pad = np.full((missing, *x.shape[1:]), fill, x.dtype)
    out[key] = np.concatenate([x, pad])
  return out
