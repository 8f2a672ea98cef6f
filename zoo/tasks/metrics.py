"""Evaluation metrics that need whole predictions, computed by the field's reference libraries.

* classification: macro-F1 over the classes (scikit-learn's ``f1_score``);
* tagging: span (word / entity) precision, recall and F1 (seqeval, strict mode: a span counts
  only when its boundaries and type both match). B/M/E/S word-segmentation tags are read as
  the IOBES scheme (M = I, every word one span of type ``W``); ``B-PER`` style tags as IOB2;
* translation: corpus BLEU of detokenised greedy or beam-search output (sacrebleu, default
  13a tokenisation, the figure papers report);
* summarization: ROUGE-1/2/L (Google's ``rouge-score``, Porter stemming), F-measure averaged
  over examples, x 100, as summarization papers report it;
* language modelling: bits per byte, the tokenizer-independent form of the loss.

The device side of evaluation (a task's ``predictions``) only produces arrays: predicted ids
next to labels. Everything here runs on the host over the collected arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def macro_f1(labels: np.ndarray, preds: np.ndarray) -> float:
  """Unweighted mean of per-class F1 over the classes present in labels or predictions.

  The caller leaves out rows that do not count (padding).
  """
  from sklearn.metrics import f1_score

  labels, preds = np.asarray(labels).ravel(), np.asarray(preds).ravel()
  if not labels.size:
    return 0.0
  return float(f1_score(labels, preds, average="macro", zero_division=0))


def _is_bmes(label_names: Sequence[str]) -> bool:
  return set(label_names) <= {"B", "M", "E", "S"}


def to_spans_scheme(tags: Sequence[str], bmes: bool) -> list[str]:
  """Tag names in the form seqeval reads: BMES -> ``B-W / I-W / E-W / S-W``, others unchanged."""
  if not bmes:
    return list(tags)
  return [{"B": "B-W", "M": "I-W", "E": "E-W", "S": "S-W"}[t] for t in tags]


def span_scores(
    gold_rows: Sequence[Sequence[int]],
    pred_rows: Sequence[Sequence[int]],
    label_names: Sequence[str],
) -> dict[str, float]:
  """``{"span_precision", "span_recall", "span_f1"}`` of predicted tag rows against gold rows.

  Args:
    gold_rows: per sentence, the gold tag ids of its labelled positions, in order.
    pred_rows: the predicted tag ids at the same positions.
    label_names: tag id -> name (``("B", "M", "E", "S")`` or ``("O", "B-PER", ...)``).
  """
  from seqeval.metrics import f1_score, precision_score, recall_score
  from seqeval.scheme import IOB2, IOBES

  bmes = _is_bmes(label_names)
  names = list(label_names)
  gold = [to_spans_scheme([names[t] for t in row], bmes) for row in gold_rows]
  pred = [to_spans_scheme([names[t] for t in row], bmes) for row in pred_rows]
  if not any(gold):
    return {"span_precision": 0.0, "span_recall": 0.0, "span_f1": 0.0}
  kw = dict(mode="strict", scheme=IOBES if bmes else IOB2, zero_division=0)
  return {
      "span_precision": float(precision_score(gold, pred, **kw)),
      "span_recall": float(recall_score(gold, pred, **kw)),
      "span_f1": float(f1_score(gold, pred, **kw)),
  }


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
  """sacrebleu's corpus BLEU (13a tokenisation, one reference per sentence), 0..100."""
  import sacrebleu

  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references.")
  return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """``{"rouge1", "rouge2", "rougeL", "rougeLsum"}``: mean F-measure over the pairs, 0..100.

  ``rouge_score.rouge_scorer.RougeScorer(..., use_stemmer=True)``. ROUGE-Lsum is the
  summary-level LCS over sentences separated by newlines (write one sentence per line); the
  other three ignore newlines.
  """
  from rouge_score import rouge_scorer

  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references.")
  if not references:
    raise ValueError("ROUGE of no examples: give at least one hypothesis and reference.")
  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
  totals = dict.fromkeys(ROUGE_TYPES, 0.0)
  for hyp, ref in zip(hypotheses, references, strict=True):
    scores = scorer.score(ref, hyp)  # (target, prediction)
    for name in ROUGE_TYPES:
      totals[name] += scores[name].fmeasure
  return {name: 100.0 * total / len(references) for name, total in totals.items()}


def text_bytes(tokenizer, targets: np.ndarray, weights: np.ndarray) -> int:
  """UTF-8 bytes of the text the weighted targets spell, row by row (``tokenizer.decode``).

  Decoding whole rows rather than single tokens keeps multi-byte characters split over
  byte-level BPE tokens, and WordPiece continuations (``##ing``), counted exactly.
  """
  total = 0
  for row, w in zip(np.asarray(targets), np.asarray(weights), strict=True):
    ids = row[(w > 0) & (row >= 0)]
    if ids.size:
      total += len(tokenizer.decode([int(i) for i in ids]).encode("utf-8"))
  return total


def bits_per_byte(nll_nats_sum: float, num_bytes: float) -> float:
  """Total negative log-likelihood (nats) over the bytes it predicted, in bits per byte."""
  return float(nll_nats_sum) / (math.log(2.0) * float(num_bytes)) if num_bytes else 0.0
