"""Extractive question answering (SQuAD): the answer is a span of the context.

Data: question / context / answers records (offline: questions about the Python standard
library's own docstrings, ``zoo.data.offline_qa``; TFDS: ``squad/v1.1`` and ``squad/v2.0``).
A context longer than a row is cut into overlapping windows (``seq_len``, ``doc_stride``) with
the tokenizer's offset mapping, so every token knows which characters of the context it covers
(``zoo.data.qa``). Batch: ``input_ids``, ``token_type_ids``, ``attention_mask [B, L]``,
``start_positions``, ``end_positions [B]`` (0, the [CLS] row, when the answer is not in the
window) and ``window_id [B]``. Loss: the mean of the start and end cross entropies (Hugging
Face's convention). Evaluation decodes the best span of every example over all its windows
(``zoo.generate.spans``) and scores exact match and F1 with the official SQuAD normalisation
(``zoo.tasks.squad``); with ``null_threshold`` set (SQuAD 2.0) an example may have no answer,
and the best threshold on the evaluated examples is reported as the official script does.
"""

from __future__ import annotations

import collections
import functools
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from zoo import registry
from zoo.data import offline_qa
from zoo.data import tfds_sources as tfds_src
from zoo.generate import spans
from zoo.tasks import base, losses, squad


class QuestionAnswering(base.Task):
  """Start and end of the answer span: two token classifications over the window."""

  name = "question_answering"

  def data_defaults(self):
    return {
        **base.TEXT_DATA, "seq_len": 384, "tfds_name": "squad/v1.1", "doc_stride": 128,
        "max_answer_length": 30, "n_best": 20, "null_threshold": None,
    }

  def check_data(self, cfg):
    if not 0 <= cfg.doc_stride < cfg.seq_len:
      raise ValueError(
          f"doc_stride={cfg.doc_stride} must be in [0, seq_len={cfg.seq_len}): it is the "
          "overlap of consecutive windows (BERT on SQuAD: 128 of 384)."
      )
    for key in ("max_answer_length", "n_best"):
      if not isinstance(cfg[key], int) or cfg[key] < 1:
        raise ValueError(f"{key} must be an integer >= 1; got {cfg[key]!r}.")
    if cfg.null_threshold is not None and not isinstance(cfg.null_threshold, (int, float)):
      raise ValueError(
          f"null_threshold must be a number (SQuAD 2.0: answer nothing when the [CLS] score "
          f"beats the best span by more) or None (always answer); got {cfg.null_threshold!r}."
      )

  def records(self, cfg, split):
    if cfg.source == "offline":
      return offline_qa.records(cfg.path, split, cfg.offline_eval_fraction), {}
    return tfds_src.squad_records(cfg, split), {}

  def texts(self, record):
    return (record.question, record.context)

  def dataset(self, records, tok, *, cfg, info, meta, train, common):
    from zoo.data import qa as qa_data  # noqa: PLC0415 - Grain only once data is built

    info.update(seq_len=cfg.seq_len, max_answer_length=cfg.max_answer_length,
                n_best=cfg.n_best, null_threshold=cfg.null_threshold)
    return qa_data.build(records, tok, cfg=cfg, train=train, **common)

  def model_overrides(self, info):
    # Two outputs a token (start, end) and no pooler, as transformers' BertForQuestionAnswering.
    return {**base.vocab_overrides(info), "head": "question_answering", "num_labels": 2,
            "pooler": False}

  def inputs(self, batch):
    return base.text_inputs(batch)

  def loss_weights(self, batch):
    return {"loss": losses.label_weights(batch["start_positions"])}

  def stats(self, outputs, batch):
    w = self.loss_weights(batch)["loss"]
    eps = self.label_smoothing
    ce = functools.partial(losses.cross_entropy, label_smoothing=eps)
    start, _, start_ok = ce(outputs["start_logits"], batch["start_positions"])
    end, _, end_ok = ce(outputs["end_logits"], batch["end_positions"])
    return {
        "loss": losses.weighted((start + end) / 2, w),
        "start_accuracy": losses.weighted(start_ok, w),
        "end_accuracy": losses.weighted(end_ok, w),
    }

  def predictions(self, outputs, batch):
    return {
        "start_logits": outputs["start_logits"].astype(jnp.float32),
        "end_logits": outputs["end_logits"].astype(jnp.float32),
        "window_id": batch["window_id"],
    }

  def host_metrics(self, collected, sums, info):
    windows, examples = info.get("qa_windows"), info.get("qa_examples")
    if not windows or not examples:
      return {}
    ids = np.asarray(collected["window_id"])
    rows = np.flatnonzero(ids >= 0)  # not the padded rows of a short last batch
    # Score the examples whose every window was evaluated (eval.num_batches may stop early).
    total = collections.Counter(w.example for w in windows)
    seen = collections.Counter(windows[i].example for i in ids[rows])
    done = sorted(e for e, n in seen.items() if n == total[e])
    if not done:
      return {}
    index = {e: k for k, e in enumerate(done)}
    rows = [r for r in rows if windows[ids[r]].example in index]
    threshold = info.get("null_threshold")
    answers, null_diff = spans.predict(
        [examples[e] for e in done],
        [_Window(index[windows[ids[r]].example], windows[ids[r]].offsets) for r in rows],
        np.asarray(collected["start_logits"])[rows], np.asarray(collected["end_logits"])[rows],
        n_best=int(info.get("n_best", 20)),
        max_answer_length=int(info.get("max_answer_length", 30)), null_threshold=threshold,
    )
    out = squad.scores([examples[e] for e in done], answers,
                       null_diff if threshold is not None else None)
    out = {k: float(v) for k, v in out.items()}
    out["exact_match"] = out.pop("exact")
    return out


class _Window(NamedTuple):
  """What span decoding reads of a window: its example (in the scored list) and offsets."""

  example: int
  offsets: np.ndarray


registry.register_task(QuestionAnswering)
