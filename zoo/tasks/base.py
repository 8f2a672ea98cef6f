"""The task record: one training objective's whole vertical, from records to metrics.

A task module (``zoo/tasks/lm.py`` ...) subclasses :class:`Task`, gives it a ``name`` and ends
with ``registry.register_task(TheTask)``. The record owns everything that differs between
objectives, in the order data flows:

* data: ``data_defaults`` (its keys of ``zoo.data.default_config``), ``check_data``, ``records``
  (offline and TFDS), ``texts``, ``tokenizer_key`` and ``special_tokens`` (for training a
  tokenizer), ``dataset`` (the batch builder);
* model: ``model_overrides`` (vocabulary, labels, head implied by the data), ``inputs``;
* loss: ``loss_weights``, ``stats`` (``name -> (sum, count)``), ``units`` (throughput);
* evaluation: ``predictions`` and ``host_metrics`` (macro-F1, span F1, bits per byte), and the
  hooks ``decode_metrics`` (BLEU of decoded translations) and ``sample`` (text at the end);
* fine-tuning: ``checkpoint_data`` (what a checkpoint folder says about the data).

``zoo.data``, ``zoo.training`` and the benchmarks ask ``zoo.registry.task(name)`` for the record
and call these; no module outside a task's own file compares task names.

Shapes: B batch, L length, S source length, T target length, V vocabulary, C classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import jax
import numpy as np

from zoo.tasks import losses

Array = jax.Array
Batch = dict[str, Array]
Stats = dict[str, tuple[Array, Array]]

# The data keys of every text task (a task's ``data_defaults`` spreads what it uses):
# ``tokenizer`` ("byte", "bpe", "sentencepiece" or a tokenizer.json / vocab.txt / .model path),
# ``vocab_size`` and ``tokenizer_train_examples`` (trained vocabularies), ``tokenizer_dir``
# (their cache), ``text_keys`` (TFDS text fields; None = automatic), ``seq_len``.
TEXT_DATA = dict(
    tokenizer="byte", vocab_size=8000, tokenizer_train_examples=20000, tokenizer_dir=None,
    text_keys=None, seq_len=128,
)


@dataclasses.dataclass(frozen=True)
class Task:
  """Base task; subclasses set ``name`` and override what their objective needs.

  Attributes:
    label_smoothing: epsilon for the token / class cross entropies.
    fused_loss: a task whose loss sits on the model's vocabulary projection
      (``projection_loss``) asks the model for it (``return_projection=True``) and computes
      the cross entropy blockwise, never the ``[..., V]`` logits; False = full logits (A/B).
  """

  label_smoothing: float = 0.0
  fused_loss: bool = True

  name: ClassVar[str] = ""
  # Stats whose means add up to the training loss, and the throughput unit.
  loss_terms: ClassVar[tuple[str, ...]] = ("loss",)
  unit: ClassVar[str] = "tokens"
  # The token loss reads the model's output projection; the families serving the task take
  # ``return_projection=True`` and return a ``zoo.layers.fused_cross_entropy.Projection``.
  projection_loss: ClassVar[bool] = False

  # -- data --------------------------------------------------------------------------------

  def data_defaults(self) -> dict[str, Any]:
    """This task's data keys and defaults, on top of ``zoo.data``'s common keys."""
    return {}

  def check_data(self, cfg) -> None:
    """Raise ValueError on a bad value of one of this task's data keys."""

  def records(self, cfg, split: str) -> tuple[Sequence, dict[str, Any]]:
    """The raw records of ``split`` (offline or TFDS, by ``cfg.source``) and what is known
    about them (``label_names``, ``languages``)."""
    raise NotImplementedError

  def texts(self, record) -> Iterable[str]:
    """The text of one record, for training a tokenizer."""
    return ()

  def tokenizer_key(self, cfg) -> tuple:
    """Data keys besides the corpus that change a trained vocabulary (its cache key)."""
    return ()

  def special_tokens(self, cfg) -> tuple[str, ...]:
    """Extra special tokens a trained vocabulary needs for this task (span corruption's
    sentinels), added after the usual ones; part of its cache key."""
    return ()

  def dataset(self, records, tok, *, cfg, info: dict, meta: dict, train: bool, common: dict):
    """The ``zoo.data.iteration.Dataset`` of these records; adds its facts to ``info``.

    ``common`` holds the ``layout``, ``info`` and ``tag`` every builder takes; ``tok`` is the
    tokenizer (None for a task without a ``tokenizer`` data key).
    """
    raise NotImplementedError

  # -- model and loss ----------------------------------------------------------------------

  def model_overrides(self, info: dict) -> dict:
    """Model config fields implied by the task and the data (vocabulary, labels, head)."""
    return {}

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
    """Run the model on a batch (dropout on when ``train``); with :attr:`fused_loss` and
    ``projection_loss`` it returns the head's projection record instead of logits."""
    args, kwargs = self.inputs(batch)
    if self.projection_loss and self.fused_loss:
      kwargs = {**kwargs, "return_projection": True}
    rngs = {"dropout": rng} if train and rng is not None else None
    return apply_fn({"params": params}, *args, deterministic=not train, rngs=rngs, **kwargs)

  # -- evaluation --------------------------------------------------------------------------

  def predictions(self, outputs: Any, batch: Batch) -> dict[str, Array] | None:
    """Arrays that evaluation collects on the host for :meth:`host_metrics` (None: none)."""
    return None

  def host_metrics(self, collected: dict[str, np.ndarray], sums: dict[str, Any], info: dict):
    """Metrics over the whole evaluation from the collected predictions (and stat sums)."""
    return {}

  def decode_metrics(self, model, params, dataset, info: dict, eval_cfg) -> dict[str, float]:
    """Metrics that decode with the model (``config.eval``: ``decode_batches``, ...)."""
    return {}

  def sample(self, model, params, info: dict, config) -> str | None:
    """Text the trained model writes at the end of a run (None: this task writes none)."""
    return None

  def checkpoint_data(self, data_cfg, path: str) -> None:
    """Set data keys from what the checkpoint folder ``path`` says (image statistics...)."""

  # -- shared helpers ----------------------------------------------------------------------

  def token_stats(self, logits: Any, targets: Array, weights: Array, prefix: str = "") -> Stats:
    """Loss, nll and accuracy sums of a cross entropy, named with ``prefix``.

    ``logits``: ``[..., V]`` logits, or a head's ``Projection`` (the fused loss,
    :func:`zoo.tasks.losses.head_cross_entropy`).
    """
    loss, nll, correct = losses.head_cross_entropy(logits, targets, self.label_smoothing)
    out = {f"{prefix}loss": losses.weighted(loss, weights)}
    out[f"{prefix}nll"] = losses.weighted(nll, weights)
    out[f"{prefix}accuracy"] = losses.weighted(correct, weights)
    return out


class TeacherForced(Task):
  """Sequence to sequence with teacher forcing, the batch of every encoder-decoder task:
  ``src_ids [B, S]`` in, ``tgt_in_ids [B, T]`` fed to the decoder, ``tgt_out_ids`` predicted
  where ``weights`` (``[B, T]``) are 1 (translation, summarization, span corruption)."""

  projection_loss = True

  def model_overrides(self, info):
    """The tokenizer's vocabulary and pad, and the data's EOS and decoder start for the
    families whose configs name them (T5)."""
    out = vocab_overrides(info)
    for key in ("eos_id", "decoder_start_id"):
      if info.get(key) is not None:
        out[key] = int(info[key])
    return out

  def inputs(self, batch):
    return (batch["src_ids"], batch["tgt_in_ids"]), {}

  def loss_weights(self, batch):
    return {"loss": losses.label_weights(batch["tgt_out_ids"], batch["weights"])}

  def stats(self, outputs, batch):
    return self.token_stats(outputs, batch["tgt_out_ids"], self.loss_weights(batch)["loss"])

  def units(self, shapes):
    (b, s), (_, t) = shapes["src_ids"], shapes["tgt_in_ids"]
    return b * (s + t)


def vocab_overrides(info: dict, *, pad: bool = True) -> dict[str, int]:
  """``vocab_size`` (and ``pad_id``) of the data's tokenizer, where known."""
  out = {}
  if info.get("vocab_size"):
    out["vocab_size"] = int(info["vocab_size"])
  if pad and "pad_id" in info:
    out["pad_id"] = int(info["pad_id"])
  return out


def num_labels(info: dict) -> int | None:
  """The number of classes or tags the data has, if known."""
  n = info.get("num_labels", info.get("num_classes"))
  return None if n is None else int(n)


def text_inputs(batch: Batch) -> tuple[tuple, dict]:
  """``(input_ids,)`` and the BERT-style keyword inputs the batch has."""
  kwargs = {k: batch[k] for k in ("token_type_ids", "attention_mask") if k in batch}
  return (batch["input_ids"],), kwargs
