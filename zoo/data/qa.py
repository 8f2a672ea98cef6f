"""Extractive question answering (SQuAD): examples, overlapping windows and their batches.

An example is a question, a context and its gold answers, each ``(text, answer_start)`` with
``answer_start`` a character index into the context (SQuAD 2.0's unanswerable questions have
none). The model reads windows (Devlin et al. 2019; Hugging Face ``run_qa``)::

  [CLS] question [SEP] context piece [SEP] [PAD] ...     token_type_ids 1 on "piece [SEP]"

A context longer than one window is cut into overlapping pieces: consecutive pieces share
``doc_stride`` tokens (Hugging Face's ``stride``), so an answer near a cut is whole in at least
one of them whenever it is not longer than the overlap. A window's ``start_position`` /
``end_position`` are the token indices of the answer's first and last token when the answer
lies entirely inside its piece, else 0 ([CLS]: "no answer here"); unanswerable examples are 0
in every window. Each window keeps the character span of every context token (``offsets``),
so a predicted token span becomes text again (``context[offsets[s][0]:offsets[e][1]]``).

Answers are located with the Hugging Face convention ``answer_end = answer_start +
len(text)``; an answer whose text is not at ``answer_start`` in the context is mislabeled:
training keeps its example out of the windows (counted, logged), evaluation keeps the example
(its metrics compare texts) with positions 0.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from zoo.data.batch import IGNORE_INDEX
from zoo.data.tokenizers import encode_with_offsets

if TYPE_CHECKING:
  from zoo.data.iteration import Dataset, Layout

log = logging.getLogger(__name__)

SPECIAL_TOKENS = 3  # [CLS], [SEP] after the question, [SEP] after the context piece


@dataclasses.dataclass(frozen=True)
class QAExample:
  """One question about one context.

  Attributes:
    id: unique id (SQuAD's ``id``), the key of predictions.
    question: the question.
    context: the passage the answer is a span of.
    answers: ``(text, answer_start)`` pairs, ``answer_start`` a character index into
      ``context``; ``()`` = unanswerable (SQuAD 2.0).
  """

  id: str
  question: str
  context: str
  answers: tuple[tuple[str, int], ...] = ()


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: arrays have no truth value
class Window:
  """One model input: the question and one piece of an example's context (read-only arrays).

  Attributes:
    example: index of the example in the list the windows were made from.
    input_ids: ``[L]`` int32 ``[CLS] question [SEP] piece [SEP]`` then padding.
    token_type_ids: ``[L]`` int32, 1 on the piece and its [SEP].
    attention_mask: ``[L]`` int32, 1 on real tokens.
    offsets: ``[L, 2]`` int32 character span ``(start, end)`` in the context of each piece
      token; ``(-1, -1)`` on question, special and padding tokens.
    start_position: token index of the answer's first token, 0 ([CLS]) when the answer is not
      entirely inside this window or there is none.
    end_position: token index of the answer's last token, or 0.
  """

  example: int
  input_ids: np.ndarray
  token_type_ids: np.ndarray
  attention_mask: np.ndarray
  offsets: np.ndarray
  start_position: int
  end_position: int


def make_windows(
    examples: Sequence[QAExample], tok, *, seq_len: int, doc_stride: int, train: bool = False,
) -> tuple[list[Window], dict[str, Any]]:
  """All windows of ``examples``, in example order (see the module docstring).

  Args:
    examples: the examples.
    tok: a tokenizer with character offsets (:func:`zoo.data.tokenizers.encode_with_offsets`:
      ``"byte"``, ``"bpe"``, a ``tokenizer.json`` or ``vocab.txt``).
    seq_len: tokens per window, L.
    doc_stride: context tokens shared by consecutive windows of one example.
    train: leave examples whose gold answer is not at its ``answer_start`` out (training);
      else keep them with positions 0 (evaluation scores the texts).

  Returns:
    ``(windows, stats)``; stats counts ``examples``, ``windows``, ``no_answer`` (examples
    without answers), ``mislabeled`` (answerable examples none of whose answers is at its
    ``answer_start``), ``mislabeled_ids`` (the first 10), ``skipped`` and ``skipped_ids``
    (those left out: all mislabeled ones when ``train``, else none), ``answer_in_no_window``
    (kept answers longer than every window that holds their start: positions 0 everywhere)
    and ``max_windows`` (most windows of one example).

  Raises:
    ValueError: before any window is made, for a tokenizer without offsets, a ``doc_stride``
      that is negative or leaves a window no new context tokens, a question too long for
      ``seq_len``, or a context with no tokens; each names the example and the fix.
  """
  from zoo.data.bert import _cls_sep  # noqa: PLC0415 - Grain only once data is built

  cls, sep = _cls_sep(tok)
  encode_with_offsets(tok, "")  # a tokenizer without offsets fails here, before any work
  if seq_len < SPECIAL_TOKENS + 2:
    raise ValueError(
        f"seq_len={seq_len} leaves no room for a question and a context: a window is [CLS] "
        "question [SEP] context [SEP]; use seq_len >= 5 (SQuAD: 384)."
    )
  if not 0 <= doc_stride < seq_len - SPECIAL_TOKENS - 1:
    raise ValueError(
        f"doc_stride={doc_stride} must be >= 0 and below the context tokens of a window "
        f"(< {seq_len - SPECIAL_TOKENS - 1} at seq_len={seq_len}, less the question): it is "
        "the overlap of consecutive windows; use e.g. doc_stride = seq_len // 3 (SQuAD: 128)."
    )
  encode = functools.lru_cache(maxsize=4096)(lambda text: encode_with_offsets(tok, text))
  windows: list[Window] = []
  stats = dict(examples=len(examples), windows=0, no_answer=0, mislabeled=0, skipped=0,
               mislabeled_ids=[], skipped_ids=[], answer_in_no_window=0, max_windows=0)
  pieces = []
  for index, ex in enumerate(examples):
    q_ids = tok.encode(ex.question)
    ctx_ids, ctx_offsets = encode(ex.context)
    room = seq_len - SPECIAL_TOKENS - len(q_ids)  # context tokens per window
    _check_example(ex, len(q_ids), len(ctx_ids), room, seq_len, doc_stride)
    span = _answer_tokens(ex, ctx_offsets)
    if not ex.answers:
      stats["no_answer"] += 1
    elif span is None:
      stats["mislabeled"] += 1
      if len(stats["mislabeled_ids"]) < 10:
        stats["mislabeled_ids"].append(ex.id)
      if train:
        stats["skipped"] += 1
        stats["skipped_ids"] = stats["mislabeled_ids"]
        continue
    pieces.append((index, q_ids, ctx_ids, ctx_offsets, room, span))
  for index, q_ids, ctx_ids, ctx_offsets, room, span in pieces:
    made = _windows(index, q_ids, ctx_ids, ctx_offsets, span, cls=cls, sep=sep,
                    pad=tok.pad_id, seq_len=seq_len, room=room, doc_stride=doc_stride)
    if span is not None and not any(w.start_position for w in made):
      stats["answer_in_no_window"] += 1
    stats["max_windows"] = max(stats["max_windows"], len(made))
    windows += made
  stats["windows"] = len(windows)
  if stats["mislabeled"]:
    what = "left out of training" if train else "kept (positions 0)"
    log.warning(
        "%d of %d QA examples have no gold answer whose text is at its answer_start; %s. "
        "First ids: %s", stats["mislabeled"], len(examples), what, stats["mislabeled_ids"],
    )
  return windows, stats


def _check_example(ex: QAExample, n_question: int, n_context: int, room: int, seq_len: int,
                   doc_stride: int) -> None:
  if room < 1:
    raise ValueError(
        f"the question of QA example {ex.id!r} is {n_question} tokens; a window of "
        f"seq_len={seq_len} holds at most {seq_len - SPECIAL_TOKENS - 1} ([CLS] question [SEP] "
        "and at least one context token before the final [SEP]); raise seq_len or drop the "
        "example (questions are not truncated)."
    )
  if n_context == 0:
    raise ValueError(
        f"the context of QA example {ex.id!r} has no tokens ({ex.context[:60]!r}): an answer "
        "must be a span of it; drop the example or use a tokenizer that covers its text."
    )
  if doc_stride >= room:
    raise ValueError(
        f"doc_stride={doc_stride} is not below the {room} context tokens that fit beside the "
        f"{n_question}-token question of QA example {ex.id!r} (seq_len={seq_len}): windows "
        f"would never advance; use doc_stride < {room} or a larger seq_len."
    )


def _answer_tokens(ex: QAExample, offsets: list[tuple[int, int]]) -> tuple[int, int] | None:
  """Context token indices ``(first, last)`` of the first answer found at its start."""
  for text, start in ex.answers:
    end = start + len(text)  # Hugging Face: the end from the text's length
    if not text or start < 0 or ex.context[start:end] != text:
      continue
    first = next((i for i, (s, e) in enumerate(offsets) if e > start and e > s), None)
    last = next((i for i in reversed(range(len(offsets))) if offsets[i][0] < end
                 and offsets[i][1] > offsets[i][0]), None)
    if first is not None and last is not None and first <= last:
      return first, last
  return None


@functools.cache
def _segments(seq_len: int, n_first: int, n_real: int) -> tuple[np.ndarray, np.ndarray]:
  """Shared read-only ``(token_type_ids, attention_mask)`` of a window layout."""
  positions = np.arange(seq_len)
  types = ((positions >= n_first) & (positions < n_real)).astype(np.int32)
  mask = (positions < n_real).astype(np.int32)
  types.flags.writeable = mask.flags.writeable = False
  return types, mask


def _windows(index, q_ids, ctx_ids, ctx_offsets, span, *, cls, sep, pad, seq_len, room,
             doc_stride) -> list[Window]:
  """The windows of one example: pieces of ``room`` tokens advancing ``room - doc_stride``."""
  starts = [0]
  while starts[-1] + room < len(ctx_ids):
    starts.append(starts[-1] + room - doc_stride)
  first = len(q_ids) + 2  # row index of the piece's first token
  out = []
  for a in starts:
    b = min(a + room, len(ctx_ids))
    ids = np.full(seq_len, pad, np.int32)
    ids[: first + b - a + 1] = [cls, *q_ids, sep, *ctx_ids[a:b], sep]
    offsets = np.full((seq_len, 2), -1, np.int32)
    offsets[first : first + b - a] = ctx_offsets[a:b]
    ids.flags.writeable = offsets.flags.writeable = False
    types, mask = _segments(seq_len, first, first + b - a + 1)
    inside = span is not None and a <= span[0] and span[1] < b
    s, e = (first + span[0] - a, first + span[1] - a) if inside else (0, 0)
    out.append(Window(index, ids, types, mask, offsets, s, e))
  return out


def build(examples: Sequence[QAExample], tok, *, cfg, train: bool, layout: Layout,
          info: dict[str, Any], tag: dict[str, Any], **kwargs) -> Dataset:
  """Batches of windows: one row per window of ``examples`` (``layout`` counts windows).

  Rows: ``input_ids``, ``token_type_ids``, ``attention_mask`` ``[L]`` int32;
  ``start_positions``, ``end_positions`` int32 (``IGNORE_INDEX`` on padding rows of a short
  last eval batch); ``window_id`` int32 (index into ``info["qa_windows"]``, -1 on padding).

  Args:
    examples: the split's examples.
    tok: a tokenizer with character offsets.
    cfg: the data config (``seq_len``, ``doc_stride``).
    train: training split (mislabeled examples are left out, see :func:`make_windows`).
    layout: the split's layout; its ``num_records`` is replaced by the number of windows.
    info: updated with ``qa_examples``, ``qa_windows``, ``qa_skipped``, ``qa_stats``,
      ``seq_len`` and ``doc_stride``.
    tag: the dataset's identity for resume checks.
    **kwargs: passed to :func:`zoo.data.iteration.example_dataset`.

  Returns:
    The dataset.
  """
  from zoo.data.iteration import example_dataset  # noqa: PLC0415 - Grain only when building

  seq_len = cfg.seq_len
  windows, stats = make_windows(examples, tok, seq_len=seq_len, doc_stride=cfg.doc_stride,
                                train=train)
  if not windows:
    raise ValueError(
        f"none of the {len(examples)} QA examples gives a window: every gold answer is "
        f"missing from its answer_start (first ids {stats['skipped_ids']}); check the data."
    )
  info.update(qa_examples=list(examples), qa_windows=windows, qa_skipped=stats["skipped"],
              qa_stats=stats, seq_len=seq_len, doc_stride=cfg.doc_stride)

  def make(record, rng):
    w = windows[record]
    return {
        "input_ids": w.input_ids, "token_type_ids": w.token_type_ids,
        "attention_mask": w.attention_mask, "start_positions": np.int32(w.start_position),
        "end_positions": np.int32(w.end_position), "window_id": np.int32(record),
    }

  def empty():
    z = np.zeros(seq_len, np.int32)
    return {
        "input_ids": np.full(seq_len, tok.pad_id, np.int32), "token_type_ids": z,
        "attention_mask": z, "start_positions": np.int32(IGNORE_INDEX),
        "end_positions": np.int32(IGNORE_INDEX), "window_id": np.int32(-1),
    }

  layout = dataclasses.replace(layout, num_records=len(windows))
  return example_dataset(make_example=make, empty_example=empty, layout=layout, info=info,
                         tag=tag, **kwargs)
