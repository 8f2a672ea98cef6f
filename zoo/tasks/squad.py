"""The SQuAD metrics of extractive question answering (the answers come from
``zoo.generate.spans``).

The metrics are those of the official SQuAD evaluation scripts (v1.1 and v2.0): answers are
compared after lower-casing, removing punctuation, the articles a / an / the and repeated
whitespace; F1 is over the bag of normalised tokens; an example is scored against its best
gold answer; an unanswerable question (SQuAD 2.0) has the single gold answer ``""``.
``scores(..., null_diff)`` adds the best no-answer threshold the v2.0 script searches for.

Pure numpy and Python: nothing here traces or touches a device.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
  """The official SQuAD normalisation: lower case, no punctuation, articles or extra spaces."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(golds: Sequence[str]) -> list[str]:
  # As the v2.0 script: gold answers that normalise to nothing are dropped, and a question
  # with none left is unanswerable, its one gold answer "".
  return [g for g in golds if normalize_answer(g)] or [""]


def exact_match(prediction: str, golds: Sequence[str]) -> float:
  """1.0 when the normalised prediction equals a normalised gold answer, else 0.0.

  ``golds`` empty (or only answers that normalise to nothing) means unanswerable: the gold
  answer is ``""``.
  """
  pred = normalize_answer(prediction)
  return float(any(pred == normalize_answer(g) for g in _golds(golds)))


def _f1(prediction_tokens: list[str], gold_tokens: list[str]) -> float:
  if not prediction_tokens or not gold_tokens:
    return float(prediction_tokens == gold_tokens)  # a no-answer scores 1 only against one
  same = sum((collections.Counter(prediction_tokens) & collections.Counter(gold_tokens)).values())
  if not same:
    return 0.0
  precision, recall = same / len(prediction_tokens), same / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def f1(prediction: str, golds: Sequence[str]) -> float:
  """Token-bag F1 of the normalised prediction against its best gold answer, 0..1."""
  pred = normalize_answer(prediction).split()
  return max(_f1(pred, normalize_answer(g).split()) for g in _golds(golds))


def _best_threshold(
  ids: Sequence[str], raw: Mapping[str, float], answers, null_diff, has_ans
) -> tuple[float, float]:
  """The v2.0 script's threshold search: answer ``""`` where ``null_diff > threshold``.

  Starts from every question answered ``""`` (the unanswerable ones score 1) and lets the
  questions in, lowest ``null_diff`` first, with their predicted answer: an answerable one adds
  its raw score, an unanswerable one costs 1 unless its prediction is ``""``. The threshold is
  the ``null_diff`` of the last question let in at the best total (0.0 when none helps).
  """
  current = best = sum(1 for i in ids if not has_ans[i])
  threshold = 0.0
  for i in sorted(ids, key=lambda i: null_diff[i]):
    if has_ans[i]:
      current += raw[i]
    elif answers[i]:
      current -= 1
    if current > best:
      best, threshold = current, null_diff[i]
  return 100.0 * best / len(ids), float(threshold)


def scores(
  examples: Sequence[Any],
  answers: Mapping[str, str],
  null_diff: Mapping[str, float] | None = None,
) -> dict[str, float]:
  """The SQuAD evaluation of predicted answers, as the official scripts report it.

  Args:
    examples: the examples (``.id``, ``.answers``: ``(text, answer_start)`` pairs, empty for
      an unanswerable question).
    answers: id -> predicted answer (``""`` = no answer), e.g. from :func:`predict`.
    null_diff: id -> ``null_score - best_span_score`` (from :func:`predict`); adds the
      best-threshold figures.

  Returns:
    ``"exact"``, ``"f1"`` (percent) and ``"total"``; ``"has_ans_exact"``, ``"has_ans_f1"``,
    ``"has_ans_total"`` when some examples have an answer and ``"no_ans_*"`` when some have
    none; with ``null_diff``: ``"best_exact"``, ``"best_exact_thresh"``, ``"best_f1"``,
    ``"best_f1_thresh"``.
  """
  if not examples:
    raise ValueError("No examples to score: pass at least one.")
  missing = [ex.id for ex in examples if ex.id not in answers]
  if missing:
    raise ValueError(
      f"{len(missing)} examples have no predicted answer (first: {missing[0]!r}); "
      'predict every example (answer "" for no answer).'
    )
  ids = [ex.id for ex in examples]
  has_ans = {ex.id: bool(ex.answers) for ex in examples}
  golds = {ex.id: [text for text, _ in ex.answers] for ex in examples}
  em = {i: exact_match(answers[i], golds[i]) for i in ids}
  f = {i: f1(answers[i], golds[i]) for i in ids}

  def summary(prefix, chosen):
    return {
      f"{prefix}exact": 100.0 * sum(em[i] for i in chosen) / len(chosen),
      f"{prefix}f1": 100.0 * sum(f[i] for i in chosen) / len(chosen),
      f"{prefix}total": len(chosen),
    }

  out = summary("", ids)
  for prefix, want in (("has_ans_", True), ("no_ans_", False)):
    chosen = [i for i in ids if has_ans[i] == want]
    if chosen:
      out.update(summary(prefix, chosen))
  if null_diff is not None:
    missing = [i for i in ids if i not in null_diff]
    if missing:
      raise ValueError(
        f"{len(missing)} examples have no null_diff (first: {missing[0]!r}); pass the "
        "null_diff predict returned for the same examples."
      )
    out["best_exact"], out["best_exact_thresh"] = _best_threshold(
      ids, em, answers, null_diff, has_ans
    )
    out["best_f1"], out["best_f1_thresh"] = _best_threshold(ids, f, answers, null_diff, has_ans)
  return out
