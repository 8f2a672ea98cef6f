"""Span decoding for extractive question answering: the best answer span of each example.

Follows Hugging Face's ``run_qa`` post-processing. A long context is read in overlapping windows;
in each window the ``n_best`` highest start logits and the ``n_best`` highest end logits give
the candidate spans, a span is kept when both its tokens lie inside the context (their
character offsets are not ``(-1, -1)``), it does not end before it starts and it is at most
``max_answer_length`` tokens long. Its score is ``start_logit + end_logit``, its text the
context between the first token's start and the last token's end character. The null ("no
answer") score of an example is the lowest ``start_logits[0] + end_logits[0]`` over its
windows (position 0 is ``[CLS]``).

Pure numpy and Python: nothing here traces or touches a device. The metrics that score these
answers are ``zoo.tasks.squad``.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class Span:
  """One candidate answer: a piece of the context and its score.

  Attributes:
    text: ``context[start_char:end_char]``.
    start_char: index of its first character in the context.
    end_char: one past its last character.
    score: ``start_logit + end_logit`` of its first and last token.
  """

  text: str
  start_char: int
  end_char: int
  score: float


def _check_options(n_best: int, max_answer_length: int) -> None:
  if n_best < 1:
    raise ValueError(f"n_best={n_best}: keep at least one candidate (n_best >= 1; 20 is usual).")
  if max_answer_length < 1:
    raise ValueError(
      f"max_answer_length={max_answer_length}: an answer has at least one token "
      "(max_answer_length >= 1; 30 is usual)."
    )


def _top(logits_L: np.ndarray, n: int) -> np.ndarray:
  """Indices of the ``n`` largest logits, largest first (ties: the earlier position first)."""
  return np.argsort(-logits_L, kind="stable")[:n]


def _window_candidates(start_L, end_L, offsets_Lx2, n_best, max_answer_length):
  """``(start_index, end_index, score)`` arrays of the valid top-n x top-n spans of one window."""
  starts, ends = _top(start_L, n_best), _top(end_L, n_best)
  s, e = np.meshgrid(starts, ends, indexing="ij")
  s, e = s.ravel(), e.ravel()
  in_context = offsets_Lx2[:, 0] >= 0
  keep = in_context[s] & in_context[e] & (e >= s) & (e - s + 1 <= max_answer_length)
  s, e = s[keep], e[keep]
  return s, e, start_L[s].astype(np.float64) + end_L[e].astype(np.float64)


def best_spans(
  windows_start_logits: Sequence[np.ndarray],
  windows_end_logits: Sequence[np.ndarray],
  windows_offsets: Sequence[np.ndarray],
  context: str,
  *,
  n_best: int,
  max_answer_length: int,
) -> list[Span]:
  """The ``n_best`` highest-scoring answer spans of one example over all its windows.

  A span two windows both propose (the same characters, read through the overlap) is listed
  once, with its higher score.

  Args:
    windows_start_logits: per window, the start logits ``[L]``.
    windows_end_logits: per window, the end logits ``[L]``.
    windows_offsets: per window, ``[L, 2]`` character offsets into ``context``; ``(-1, -1)``
      on question, special and padding tokens.
    context: the example's context.
    n_best: how many start and how many end positions each window proposes, and how many
      spans come back at most.
    max_answer_length: the longest answer, in tokens.

  Returns:
    At most ``n_best`` spans, highest score first; empty when no window has a valid span.
  """
  _check_options(n_best, max_answer_length)
  if not len(windows_start_logits) == len(windows_end_logits) == len(windows_offsets):
    raise ValueError(
      f"{len(windows_start_logits)} start-logit rows, {len(windows_end_logits)} end-logit "
      f"rows and {len(windows_offsets)} offset arrays: pass one of each per window."
    )
  best: dict[tuple[int, int], float] = {}
  for i, (start_L, end_L, offsets) in enumerate(
    zip(windows_start_logits, windows_end_logits, windows_offsets)
  ):
    start_L, end_L, offsets = np.asarray(start_L), np.asarray(end_L), np.asarray(offsets)
    if start_L.ndim != 1 or start_L.shape != end_L.shape or offsets.shape != (len(start_L), 2):
      raise ValueError(
        f"Window {i}: start logits {start_L.shape}, end logits {end_L.shape} and offsets "
        f"{offsets.shape} disagree; expected [L], [L] and [L, 2] for the same L."
      )
    s, e, score = _window_candidates(start_L, end_L, offsets, n_best, max_answer_length)
    for a, b, v in zip(offsets[s, 0].tolist(), offsets[e, 1].tolist(), score.tolist()):
      if v > best.get((a, b), -np.inf):
        best[(a, b)] = v
  ranked = sorted(best.items(), key=lambda kv: -kv[1])[:n_best]
  return [Span(context[a:b], a, b, v) for (a, b), v in ranked]


def null_score(windows_start_logits: Sequence[np.ndarray], windows_end_logits) -> float:
  """The no-answer score of one example: the lowest ``[CLS]`` start + end logit of its windows."""
  return min(float(s[0]) + float(e[0]) for s, e in zip(windows_start_logits, windows_end_logits))


def predict(
  examples: Sequence[Any],
  windows: Sequence[Any],
  start_logits: np.ndarray,
  end_logits: np.ndarray,
  *,
  n_best: int = 20,
  max_answer_length: int = 30,
  null_threshold: float | None = None,
) -> tuple[dict[str, str], dict[str, float]]:
  """Every example's answer from the logits of all windows.

  Args:
    examples: the examples (``.id``, ``.context``), e.g. ``zoo.data.qa.QAExample``.
    windows: the windows (``.example``: index into ``examples``, ``.offsets [L, 2]``), e.g.
      ``zoo.data.qa.Window``; row ``w`` of the logits belongs to ``windows[w]``.
    start_logits: ``[W, L]`` start logits.
    end_logits: ``[W, L]`` end logits.
    n_best: start and end candidates per window (see :func:`best_spans`).
    max_answer_length: the longest answer, in tokens.
    null_threshold: ``None`` (SQuAD 1.1) always answers with the best span; a number
      (SQuAD 2.0) answers ``""`` where ``null_diff > null_threshold``.

  Returns:
    ``(answers, null_diff)``: id -> answer text, and id -> ``null_score - best_span_score``
    (``inf`` when no window has a valid span; the answer is then ``""``).
  """
  _check_options(n_best, max_answer_length)
  start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
  if start_logits.ndim != 2 or start_logits.shape != end_logits.shape:
    raise ValueError(
      f"start_logits {start_logits.shape} and end_logits {end_logits.shape}: both must be "
      "[W, L], one row per window."
    )
  if start_logits.shape[0] != len(windows):
    raise ValueError(
      f"{start_logits.shape[0]} logit rows for {len(windows)} windows: pass one row per window, "
      "in the order of `windows` (drop the padded rows of the last batch)."
    )
  by_example: dict[int, list[int]] = collections.defaultdict(list)
  for w, window in enumerate(windows):
    if not 0 <= window.example < len(examples):
      raise ValueError(
        f"Window {w} points at example {window.example}, but there are {len(examples)} "
        "examples: pass the examples the windows were made from."
      )
    by_example[window.example].append(w)
  answers, null_diff = {}, {}
  for i, ex in enumerate(examples):
    rows = by_example.get(i)
    if not rows:
      raise ValueError(
        f"Example {ex.id!r} has no window: pass only the examples the windows were made from."
      )
    starts, ends = start_logits[rows], end_logits[rows]
    spans = best_spans(
      list(starts),
      list(ends),
      [np.asarray(windows[w].offsets) for w in rows],
      ex.context,
      n_best=n_best,
      max_answer_length=max_answer_length,
    )
    diff = null_score(starts, ends) - spans[0].score if spans else float("inf")
    null_diff[ex.id] = diff
    no_answer = not spans or (null_threshold is not None and diff > null_threshold)
    answers[ex.id] = "" if no_answer else spans[0].text
  return answers, null_diff
