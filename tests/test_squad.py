"""SQuAD span decoding and metrics: hand-worked answers from the official definitions, and
span search against a brute force over every (start, end) pair."""

import dataclasses
import itertools
import math

import numpy as np
import pytest

from zoo.generate import spans as span_lib
from zoo.tasks import squad


@dataclasses.dataclass(frozen=True)
class Example:  # the fields of zoo.data.qa.QAExample that decoding and scoring read
  id: str
  context: str
  answers: tuple = ()


@dataclasses.dataclass(frozen=True)
class Window:  # the fields of zoo.data.qa.Window that decoding reads
  example: int
  offsets: np.ndarray


# ----------------------------------------------------------------------------- normalisation


@pytest.mark.parametrize(
  "text, normalized",
  [
    ("The Eiffel Tower!", "eiffel tower"),  # case, article, punctuation
    ("  an   apple,\tthe pie\n", "apple pie"),  # whitespace collapses
    ("Theory of Anna", "theory of anna"),  # articles only as whole words
    ("A.I.", "ai"),  # punctuation goes first, so "A.I." is no article
    ("the-end", "theend"),
    ("rock 'n' roll", "rock n roll"),
    ("The", ""),
  ],
)
def test_normalize_answer_is_the_official_one(text, normalized):
  assert squad.normalize_answer(text) == normalized


# ----------------------------------------------------------------------------- EM and F1


def test_exact_match_after_normalisation():
  assert squad.exact_match("The Eiffel Tower.", ["eiffel   tower"]) == 1.0
  assert squad.exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
  assert squad.exact_match("Paris", ["London", "paris!", "Rome"]) == 1.0  # max over golds
  assert squad.exact_match("", ["Paris"]) == 0.0


def test_f1_partial_overlap_worked_by_hand():
  # pred "the big red dog barked" -> [big, red, dog, barked]: 4 tokens; gold "a red dog" ->
  # [red, dog]: 2 tokens; 2 in common. P = 2/4, R = 2/2, F1 = 2 * 0.5 * 1 / 1.5 = 2/3.
  assert squad.f1("the big red dog barked", ["a red dog"]) == pytest.approx(2 / 3)
  # Bags, not sets: [dog, dog, cat] vs [dog, cat, cat] share one dog and one cat: 2 of 3 each.
  assert squad.f1("dog dog cat", ["dog cat cat"]) == pytest.approx(2 / 3)
  # No overlap.
  assert squad.f1("blue whale", ["red dog"]) == 0.0


def test_f1_is_the_max_over_gold_answers():
  # "red cat" vs "red dog": 1 common of 2 and 2 -> P = R = 1/2, F1 = 1/2.
  # "red cat" vs "cat": 1 common, P = 1/2, R = 1/1 -> F1 = 2 * 0.5 / 1.5 = 2/3.
  assert squad.f1("red cat", ["red dog"]) == pytest.approx(0.5)
  assert squad.f1("red cat", ["cat"]) == pytest.approx(2 / 3)
  assert squad.f1("red cat", ["red dog", "cat"]) == pytest.approx(2 / 3)


def test_empty_prediction_against_an_answer_scores_zero():
  assert squad.exact_match("", ["Paris"]) == 0.0
  assert squad.f1("", ["Paris"]) == 0.0
  assert squad.f1("the", ["Paris"]) == 0.0  # normalises to nothing
  # As the v2.0 script: a gold that normalises to nothing is dropped when a real one is there.
  assert squad.exact_match("", ["The", "Paris"]) == 0.0
  assert squad.f1("", ["The", "Paris"]) == 0.0


def test_no_answer_gold_scores_one_only_for_an_empty_prediction():
  for golds in ([], [""], ["the"]):  # an answer that normalises to nothing is no answer
    assert squad.exact_match("", golds) == 1.0
    assert squad.f1("", golds) == 1.0
    assert squad.exact_match("Paris", golds) == 0.0
    assert squad.f1("Paris", golds) == 0.0
  assert squad.f1("a.", []) == 1.0  # normalises to ""


# ----------------------------------------------------------------------------- span search


def _windows(rng, n_context_tokens, seq_len, question_len, stride):
  """A context of random words, one token a word, read in overlapping windows.

  Each window: [CLS] question [SEP] context piece [SEP] padding, offsets (-1, -1) outside the
  context piece. Returns (context, [offsets [L, 2]]).
  """
  words = [
    "".join(rng.choice(list("abcdefgh"), rng.randint(1, 5))) for _ in range(n_context_tokens)
  ]
  context, spans = "", []
  for w in words:
    spans.append((len(context), len(context) + len(w)))
    context += w + " "
  room = seq_len - question_len - 3
  starts = list(range(0, max(n_context_tokens - room, 0) + 1, room - stride))
  if starts[-1] + room < n_context_tokens:
    starts.append(n_context_tokens - room)
  all_offsets = []
  for s in starts:
    offsets = np.full((seq_len, 2), -1, np.int32)
    piece = spans[s : s + room]
    offsets[question_len + 2 : question_len + 2 + len(piece)] = piece
    all_offsets.append(offsets)
  return context, all_offsets


def _brute_force(starts, ends, offsets, context, max_len, allowed=None):
  """Every valid (start, end) of every window, the best score per character span, sorted."""
  best = {}
  for w, (s_l, e_l, off) in enumerate(zip(starts, ends, offsets)):
    length = len(s_l)
    for s, e in itertools.product(range(length), range(length)):
      if allowed is not None and (s not in allowed[w][0] or e not in allowed[w][1]):
        continue
      if e < s or e - s + 1 > max_len or off[s, 0] < 0 or off[e, 0] < 0:
        continue
      key = (int(off[s, 0]), int(off[e, 1]))
      score = float(s_l[s]) + float(e_l[e])
      best[key] = max(best.get(key, -math.inf), score)
  ranked = sorted(best.items(), key=lambda kv: -kv[1])
  return [(context[a:b], a, b, v) for (a, b), v in ranked]


def _as_tuples(spans):
  return [(s.text, s.start_char, s.end_char, s.score) for s in spans]


@pytest.mark.parametrize("seed", range(12))
def test_best_spans_equals_brute_force_when_every_token_is_a_candidate(seed):
  rng = np.random.RandomState(seed)
  seq_len, max_len = 24, rng.randint(1, 8)
  context, offsets = _windows(rng, rng.randint(10, 40), seq_len, rng.randint(1, 6), stride=4)
  starts = [rng.randn(seq_len).astype(np.float32) for _ in offsets]
  ends = [rng.randn(seq_len).astype(np.float32) for _ in offsets]
  got = span_lib.best_spans(
      starts, ends, offsets, context, n_best=seq_len, max_answer_length=max_len)
  want = _brute_force(starts, ends, offsets, context, max_len)[:seq_len]
  assert len(offsets) >= 1 and got
  assert _as_tuples(got) == want
  assert len({(s.start_char, s.end_char) for s in got}) == len(got)  # overlap read once


@pytest.mark.parametrize("seed", range(12))
def test_best_spans_with_few_candidates_is_the_brute_force_best_among_them(seed):
  rng = np.random.RandomState(100 + seed)
  seq_len, n_best, max_len = 24, rng.randint(1, 6), rng.randint(2, 10)
  context, offsets = _windows(rng, rng.randint(15, 50), seq_len, rng.randint(1, 6), stride=5)
  starts = [rng.randn(seq_len).astype(np.float32) for _ in offsets]
  ends = [rng.randn(seq_len).astype(np.float32) for _ in offsets]
  allowed = [
    (set(np.argsort(-s)[:n_best].tolist()), set(np.argsort(-e)[:n_best].tolist()))
    for s, e in zip(starts, ends)
  ]
  got = span_lib.best_spans(
      starts, ends, offsets, context, n_best=n_best, max_answer_length=max_len)
  want = _brute_force(starts, ends, offsets, context, max_len, allowed)[:n_best]
  assert _as_tuples(got) == want
  full = _brute_force(starts, ends, offsets, context, max_len)
  if got:
    assert got[0].score <= full[0][3]


def test_spans_never_touch_the_question_or_special_tokens():
  rng = np.random.RandomState(0)
  seq_len = 20
  context, offsets = _windows(rng, 30, seq_len, 4, stride=3)
  starts, ends = [], []
  for off in offsets:
    outside = off[:, 0] < 0
    s, e = rng.randn(seq_len), rng.randn(seq_len)
    s[outside] += 100.0  # the question, [CLS], [SEP] and padding score far higher
    e[outside] += 100.0
    starts.append(s)
    ends.append(e)
  spans = span_lib.best_spans(starts, ends, offsets, context, n_best=seq_len, max_answer_length=30)
  token_starts = {int(a) for off in offsets for a in off[off[:, 0] >= 0, 0]}
  token_ends = {int(b) for off in offsets for b in off[off[:, 0] >= 0, 1]}
  assert spans
  for sp in spans:
    assert sp.start_char in token_starts and sp.end_char in token_ends
    assert sp.score < 100.0  # no question logit in any score
  # With only the top 3 positions (all outside the context) there is no span at all.
  assert span_lib.best_spans(starts, ends, offsets, context, n_best=3, max_answer_length=30) == []


def test_max_answer_length_is_in_tokens_and_respected():
  context = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"
  offsets = np.full((14, 2), -1, np.int32)
  offsets[2:12] = [(3 * i, 3 * i + 2) for i in range(10)]  # [CLS] q [SEP] w0..w9 [SEP] pad
  start, end = np.zeros(14), np.zeros(14)
  start[4], end[11] = 5.0, 4.0  # w2 .. w9: 8 tokens
  start[6], end[8] = 2.0, 2.0  # w4 .. w6: 3 tokens
  kw = dict(n_best=20)
  best = span_lib.best_spans([start], [end], [offsets], context, max_answer_length=8, **kw)[0]
  assert (best.text, best.score) == ("w2 w3 w4 w5 w6 w7 w8 w9", 9.0)
  spans = span_lib.best_spans([start], [end], [offsets], context, max_answer_length=7, **kw)
  assert spans[0].text != "w2 w3 w4 w5 w6 w7 w8 w9"
  for sp in spans:
    assert len(sp.text.split()) <= 7
  one = span_lib.best_spans([start], [end], [offsets], context, max_answer_length=1, **kw)
  assert all(len(sp.text.split()) == 1 for sp in one)
  assert (one[0].text, one[0].score) == ("w2", 5.0)  # w2: 5 + 0 beats w9: 0 + 4


# ----------------------------------------------------------------------------- predict


def _hand_made():
  """Two examples; "a" has two windows, "b" one. Tokens: [CLS] q [SEP] w0 w1 w2 [SEP]."""
  examples = [Example("a", "red fox ran", (("fox", 4),)), Example("b", "big old cat", ())]
  offsets = np.array([(-1, -1), (-1, -1), (-1, -1), (0, 3), (4, 7), (8, 11), (-1, -1)], np.int32)
  windows = [Window(0, offsets), Window(0, offsets), Window(1, offsets)]
  start = np.zeros((3, 7), np.float32)
  end = np.zeros((3, 7), np.float32)
  # a: [CLS] scores 3.0 in window 0 and 1.0 in window 1 -> null score min = 1.0.
  start[0, 0], end[0, 0] = 2.0, 1.0
  start[1, 0], end[1, 0] = 0.5, 0.5
  # a: best span "fox" (token 4) in window 1: 2.5 + 1.5 = 4.0 -> null_diff = 1.0 - 4.0 = -3.0.
  start[1, 4], end[1, 4] = 2.5, 1.5
  # b: null 6.0, best span "old cat" 1.0 + 1.0 = 2.0 -> null_diff = 4.0.
  start[2, 0], end[2, 0] = 3.0, 3.0
  start[2, 4], end[2, 5] = 1.0, 1.0
  return examples, windows, start, end


def test_predict_null_score_and_threshold_on_a_hand_made_example():
  examples, windows, start, end = _hand_made()
  answers, diff = span_lib.predict(examples, windows, start, end)
  assert answers == {"a": "fox", "b": "old cat"}  # SQuAD 1.1: always a span
  assert diff == pytest.approx({"a": -3.0, "b": 4.0})
  for threshold, want in [
    (0.0, {"a": "fox", "b": ""}),
    (-3.0, {"a": "fox", "b": ""}),  # "" only when null_diff > threshold
    (-3.5, {"a": "", "b": ""}),
    (4.0, {"a": "fox", "b": "old cat"}),
  ]:
    got, _ = span_lib.predict(examples, windows, start, end, null_threshold=threshold)
    assert got == want, threshold


def test_predict_without_a_valid_span_answers_nothing():
  examples, windows, start, end = _hand_made()
  answers, diff = span_lib.predict(examples, windows, start, end, n_best=1)  # only [CLS] / q
  assert answers["b"] == "" and diff["b"] == math.inf
  assert answers["a"] == "fox"  # window 1's top start and end are both token 4


# ----------------------------------------------------------------------------- scores


def _threshold_case():
  """Five questions worked by hand (EM, F1 of the prediction, null_diff):

  q1 answerable, right           EM 1, F1 1,    -2.0
  q2 unanswerable, predicts "x"  EM 0, F1 0,    -1.0
  q3 answerable, half right      EM 0, F1 2/3,   0.5   ("red cat" vs "cat")
  q4 unanswerable, predicts ""   EM 1, F1 1,     1.0
  q5 answerable, right           EM 1, F1 1,     3.0
  """
  examples = [
    Example("q1", "", (("Paris", 0),)),
    Example("q2", "", ()),
    Example("q3", "", (("cat", 0),)),
    Example("q4", "", ()),
    Example("q5", "", (("blue whale", 0), ("whale", 5))),
  ]
  answers = {"q1": "paris", "q2": "x", "q3": "red cat", "q4": "", "q5": "The whale."}
  null_diff = {"q1": -2.0, "q2": -1.0, "q3": 0.5, "q4": 1.0, "q5": 3.0}
  return examples, answers, null_diff


def test_scores_worked_by_hand():
  examples, answers, null_diff = _threshold_case()
  got = squad.scores(examples, answers)
  assert got == pytest.approx(
    {
      "exact": 100 * 3 / 5,
      "f1": 100 * (3 + 2 / 3) / 5,
      "total": 5,
      "has_ans_exact": 100 * 2 / 3,
      "has_ans_f1": 100 * (2 + 2 / 3) / 3,
      "has_ans_total": 3,
      "no_ans_exact": 50.0,
      "no_ans_f1": 50.0,
      "no_ans_total": 2,
    }
  )
  only_answerable = squad.scores([examples[0]], answers)
  assert set(only_answerable) == {
    "exact",
    "f1",
    "total",
    "has_ans_exact",
    "has_ans_f1",
    "has_ans_total",
  }


def test_best_threshold_worked_by_hand():
  # The sweep starts with every question answered "" (the 2 unanswerable ones right: 2) and
  # lets them in by null_diff: exact 2 ->q1 3 ->q2 2 ->q3 2 ->q4 2 ->q5 3 (not better than 3):
  # best 3/5 at -2.0. F1: 2 ->q1 3 ->q2 2 ->q3 2.667 ->q4 2.667 ->q5 3.667: best at 3.0.
  examples, answers, null_diff = _threshold_case()
  got = squad.scores(examples, answers, null_diff)
  assert got["best_exact"] == pytest.approx(60.0)
  assert got["best_exact_thresh"] == -2.0
  assert got["best_f1"] == pytest.approx(100 * (3 + 2 / 3) / 5)
  assert got["best_f1_thresh"] == 3.0


def test_best_threshold_when_answering_never_helps_is_zero():
  examples = [Example("n1", "", ()), Example("n2", "", ())]
  got = squad.scores(examples, {"n1": "x", "n2": "y"}, {"n1": 0.5, "n2": 2.0})
  assert got["exact"] == 0.0
  assert (got["best_exact"], got["best_exact_thresh"]) == (100.0, 0.0)


@pytest.mark.parametrize("seed", range(5))
def test_best_threshold_is_the_best_of_all_thresholds(seed):
  rng = np.random.RandomState(seed)
  golds = ["red dog", "blue whale", "old cat", ""]
  preds = ["red dog", "dog", "blue cat", "", "whale"]
  examples, answers, null_diff = [], {}, {}
  for i in range(30):
    g = golds[rng.randint(len(golds))]
    examples.append(Example(str(i), "", ((g, 0),) if g else ()))
    answers[str(i)] = preds[rng.randint(len(preds))]
    null_diff[str(i)] = float(rng.randn())

  def score(metric, threshold):
    total = 0.0
    for ex in examples:
      pred = "" if null_diff[ex.id] > threshold else answers[ex.id]
      total += metric(pred, [t for t, _ in ex.answers])
    return 100 * total / len(examples)

  got = squad.scores(examples, answers, null_diff)
  for name, metric in (("exact", squad.exact_match), ("f1", squad.f1)):
    candidates = [-math.inf, *null_diff.values()]
    best = max(score(metric, t) for t in candidates)
    assert got[f"best_{name}"] == pytest.approx(best)
    if best > score(metric, -math.inf):
      assert score(metric, got[f"best_{name}_thresh"]) == pytest.approx(best)


# ----------------------------------------------------------------------------- bad input


def test_bad_options_and_shapes_say_what_to_fix():
  examples, windows, start, end = _hand_made()
  with pytest.raises(ValueError, match="n_best=0"):
    span_lib.predict(examples, windows, start, end, n_best=0)
  with pytest.raises(ValueError, match="max_answer_length=0"):
    span_lib.predict(examples, windows, start, end, max_answer_length=0)
  with pytest.raises(ValueError, match="4 logit rows for 3 windows"):
    span_lib.predict(examples, windows, np.zeros((4, 7)), np.zeros((4, 7)))
  with pytest.raises(ValueError, match=r"start_logits \(3, 7\) and end_logits \(3, 6\)"):
    span_lib.predict(examples, windows, start, end[:, :6])
  with pytest.raises(ValueError, match="Window 0: start logits"):
    span_lib.best_spans(
      [start[0, :6]], [end[0, :6]], [windows[0].offsets], "x", n_best=2, max_answer_length=3
    )
  with pytest.raises(ValueError, match="'c' has no window"):
    span_lib.predict([*examples, Example("c", "")], windows, start, end)
  with pytest.raises(ValueError, match="no predicted answer .*'b'"):
    squad.scores(examples, {"a": "fox"})
