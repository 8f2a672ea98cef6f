"""Summarization: ROUGE against rouge-score and the paper's definition, the offline docstring
pairs (split by module), the lead baseline, TFDS keys, and tiny encoder-decoders trained through
the one loop whose eval ROUGE is the greedy decode's (checked against a full-forward argmax)."""

import ast
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rouge_score import rouge_scorer

import zoo.data as zd
from zoo import registry
from zoo.data import offline
from zoo.data import summarization as sdata
from zoo.data.tokenizers import ByteTokenizer
from zoo.generate import translate_ids
from zoo.generate.decoder import until_eos
from zoo.tasks import metrics
from zoo.tasks import summarization as stask
from zoo.training import config as config_lib
from zoo.training import loop

FRACTION = 0.1  # offline_eval_fraction's default


# ----------------------------------------------------------------------------------------------
# ROUGE.

PAIRS = [
    ("the cat sat on the mat", "the cat lay on a mat"),
    ("Running dogs were barking loudly.", "The dog runs and barks."),
    ("A completely different sentence.", "Nothing in common here"),
    ("police killed the gunman.\nhe was armed.", "the gunman was shot by police.\nhe had a gun."),
]


def test_rouge_equals_rouge_score_used_directly():
  hyps, refs = [h for h, _ in PAIRS], [r for _, r in PAIRS]
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
  want = {k: 0.0 for k in metrics.ROUGE_TYPES}
  for h, r in PAIRS:
    s = scorer.score(r, h)
    for k in want:
      want[k] += 100 * s[k].fmeasure / len(PAIRS)
  got = metrics.rouge(hyps, refs)
  assert set(got) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
  for k in want:
    assert got[k] == pytest.approx(want[k], abs=1e-9), k
  assert 0 < got["rouge2"] < got["rouge1"] < 100
  # Lsum reads sentences from newlines; the others do not.
  flat = metrics.rouge([h.replace("\n", " ") for h in hyps], [r.replace("\n", " ") for r in refs])
  assert flat["rouge1"] == pytest.approx(got["rouge1"]) and flat["rougeLsum"] != got["rougeLsum"]


def test_rouge1_by_hand_is_stemmed_unigram_overlap_f1():
  # Lin (2004): clipped unigram overlap. hyp: the x2 cat sat on mat (6); ref: the cat lay on a
  # mat (6); overlap the, cat, on, mat = 4 -> P = R = F = 4/6.
  assert metrics.rouge([PAIRS[0][0]], [PAIRS[0][1]])["rouge1"] == pytest.approx(100 * 4 / 6)
  # Porter stems: running/runs -> run, dogs/dog -> dog. hyp (2) run dog; ref (3) the dog run:
  # P = 1, R = 2/3, F1 = 0.8. Without stemming nothing would match.
  assert metrics.rouge(["running dogs"], ["the dog runs"])["rouge1"] == pytest.approx(80.0)
  with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
    metrics.rouge(["a", "b"], ["a"])


# ----------------------------------------------------------------------------------------------
# Offline pairs.


@pytest.fixture(scope="module")
def splits():
  return {s: sdata.offline_pairs(s, FRACTION) for s in ("train", "validation")}


def _module_file(module: str):
  base = offline.stdlib_dir().joinpath(*module.split("."))
  return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def test_offline_pairs_are_summary_lines_and_bodies_of_real_docstrings(splits):
  keyed = sdata.stdlib_pairs()
  print(f"\noffline summarization pairs: {len(splits['train'])} train / "
        f"{len(splits['validation'])} validation")
  assert len(splits["train"]) > 500 and len(splits["validation"]) > 50
  val = set(splits["validation"])
  # Every validation pair and one in 10 of the rest, against ast.walk of its module's file.
  checked = [(m, p) for i, (m, p) in enumerate(keyed) if p in val or i % 10 == 0]
  docs = {}
  for module, (document, summary) in checked:
    if module not in docs:
      tree = ast.parse(_module_file(module).read_text(encoding="utf-8"))
      docs[module] = [ast.get_docstring(n) for n in ast.walk(tree) if isinstance(
          n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    flat = lambda t: " ".join(t.split())  # noqa: E731
    owners = [d for d in docs[module] if d and d.split("\n")[0].strip() == summary]
    # The document is one stretch of the docstring's body (whitespace aside).
    assert any(flat(document) in flat(d.split("\n", 1)[1]) for d in owners), (module, summary)
    assert not flat(document).lower().startswith(flat(summary).lower())
    assert not re.search(r"(^|\n)>>>", document) and "\n" not in summary
    assert len(document) >= 100 and len(offline.sentences(document)) >= 2


def test_offline_split_is_by_module_and_deterministic(splits):
  keyed = sdata.stdlib_pairs()
  train, val = set(splits["train"]), set(splits["validation"])
  modules = {s: {m for m, p in keyed if p in pairs} for s, pairs in
             (("train", train), ("validation", val))}
  assert modules["train"] and modules["validation"]
  assert not modules["train"] & modules["validation"]
  assert len(train) + len(val) == len(keyed) and not train & val
  for m in modules["validation"]:
    assert offline.in_split(m.encode(), "validation", FRACTION)
  # The validation modules' files read and parsed again: the same pairs in the same order.
  for m in modules["validation"]:
    again = sdata.source_pairs(_module_file(m).read_text(encoding="utf-8"))
    kept = [p for mod, p in keyed if mod == m]
    assert [p for p in again if p in kept] == kept, m


def test_docstring_pair_keeps_the_leading_prose_and_stops_at_doctests_and_parameters():
  prose = ("The widget is copied first. Its handles are\nkept as they were, which matters when "
           "the widget is shared.")
  rest = ("Args:\n  widget: the widget.\n  depth: how deep.\n\n"
          "Nothing else changes in the widget, as the tests of this module show at length.")
  doc = f"Return the frobnicated widget.\n\n{prose}\n\n{rest}"
  document, summary = sdata.docstring_pair(doc)
  assert summary == "Return the frobnicated widget."
  assert document == " ".join(prose.split())  # the section and all after it are cut
  for cut in ("For example:\n\n    >>> frob(w)\n    <Widget>",
              ":param x: a field list\n:type x: int",
              "It is called as\n\n    frob(w)\n\nand returns the widget."):
    assert sdata.docstring_pair(f"Return the widget.\n\n{prose}\n\n{cut}")[0] == document
  # A paragraph that introduces what was cut (ends in ':') goes with it.
  assert sdata.docstring_pair(f"Return the widget.\n\n{prose}\n\nUse it like this:\n\n"
                              "    frob(w)")[0] == document
  assert sdata.docstring_pair("Summary spans\ntwo lines.\n\n" + "Body text here. " * 10) is None
  assert sdata.docstring_pair("Too short a body.\n\nOne sentence.") is None
  assert sdata.docstring_pair("Ok.\n\n" + "Body text here. " * 10) is None  # 1-word summary


# ----------------------------------------------------------------------------------------------
# The lead baseline.


def test_lead_takes_the_first_sentences():
  text = "The first  sentence ends here.\nThe second one? Yes! 3 more follow. e.g. this."
  assert sdata.lead(text) == "The first sentence ends here."
  assert sdata.lead(text, 2) == "The first sentence ends here.\nThe second one?"
  assert sdata.lead(text, 3).split("\n")[-1] == "Yes!"
  assert sdata.lead("No full stop at all", 3) == "No full stop at all"


def test_sentence_lines_keep_lines_and_split_sentences():
  assert stask.sentence_lines("Man held .\nPolice say so. More  here") == (
      "Man held .\nPolice say so.\nMore here")
  assert stask.sentence_lines("") == ""


def test_lead_rouge_on_the_offline_validation_set(splits):
  docs, refs = zip(*splits["validation"], strict=True)
  scores = stask.lead_scores(docs, refs, 1)
  print("\nLead-1 on the offline validation set: " + ", ".join(
      f"{k} {v:.2f}" for k, v in scores.items()))
  assert 0 < scores["lead_rouge2"] < scores["lead_rougeL"] <= scores["lead_rouge1"] < 100
  want = metrics.rouge([offline.sentences(d)[0] for d in docs], list(refs))
  assert scores["lead_rouge1"] == pytest.approx(want["rouge1"])


# ----------------------------------------------------------------------------------------------
# TFDS.

CNN = {"article": b"Police said. A man was held.", "highlights": b"Man held .", "id": b"7",
       "publisher": b"cnn"}
XSUM = {"document": np.array(b"Rain fell all day in the north."), "summary": b"It rained.",
        "id": b"3"}


def _text_features(record):
  return [k for k, v in record.items() if isinstance(v, (bytes, np.ndarray))]


def test_tfds_keys_of_cnn_dailymail_and_xsum_records():
  keys = sdata.resolve_keys("cnn_dailymail", _text_features(CNN))
  assert keys == ("article", "highlights")
  assert sdata.record_pair(CNN, keys) == ("Police said. A man was held.", "Man held .")
  keys = sdata.resolve_keys("xsum/1.1.0", _text_features(XSUM))
  assert sdata.record_pair(XSUM, keys) == ("Rain fell all day in the north.", "It rained.")
  assert sdata.resolve_keys("cnn_dailymail", _text_features(CNN), target_key="publisher") == (
      "article", "publisher")
  assert sdata.resolve_keys("my_news", ["body", "title"], "body", "title") == ("body", "title")


def test_known_tfds_keys_are_text_features_of_the_real_builders(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  import tensorflow_datasets.summarization  # noqa: F401

  for name, known in sdata.TFDS_DATASETS.items():
    features = tfds.builder(name, data_dir=str(tmp_path)).info.features
    texts = [k for k, f in features.items() if isinstance(f, tfds.features.Text)]
    assert sdata.resolve_keys(name, texts) == (known.source_key, known.target_key), name


@pytest.mark.parametrize("name, keys, lead", [
    ("cnn_dailymail", ("article", "highlights"), 3), ("xsum", ("document", "summary"), 1)])
def test_tfds_by_name_on_mock_data(take, tmp_path, name, keys, lead):
  tfds = pytest.importorskip("tensorflow_datasets")
  cfg = zd.default_config("summarization", source="tfds", tfds_name=name,
                          data_dir=str(tmp_path), tokenizer="byte", src_len=64, tgt_len=16)
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = zd.build_dataset(cfg, split="validation", global_batch_size=4, seed=0)
    b = take(ds, 1)[0]
  assert ds.info["summary_keys"] == keys and ds.info["lead_sentences"] == lead
  assert b["src_ids"].shape == (4, 64) and b["tgt_in_ids"].shape == (4, 16)
  assert b["weights"].any() and "tensorflow" not in sys.modules


# ----------------------------------------------------------------------------------------------
# Batches, the decoder start, the source prefix, bad input.


class NoBosBytes(ByteTokenizer):
  """Bytes without a BOS token, as T5's SentencePiece vocabularies are."""

  bos_id = None


@pytest.mark.parametrize("tok, start", [(ByteTokenizer(), 1), (NoBosBytes(), 0)])
def test_batches_start_the_decoder_from_bos_else_pad_and_prepend_the_prefix(
    take, monkeypatch, splits, tok, start):
  monkeypatch.setattr(zd, "make_tokenizer", lambda cfg: tok)
  ds = zd.build_dataset({"task": "summarization", "source_prefix": "summarize: ", "src_len": 256,
                         "tgt_len": 128}, split="validation", global_batch_size=4, seed=0)
  b = take(ds, 1)[0]
  assert ds.info["decoder_start_id"] == start and stask.decoder_start_id(tok) == start
  np.testing.assert_array_equal(b["tgt_in_ids"][:, 0], start)
  np.testing.assert_array_equal(b["tgt_in_ids"][:, 1:][b["weights"][:, 1:] > 0],
                                b["tgt_out_ids"][:, :-1][b["weights"][:, 1:] > 0])
  for row, (document, _) in zip(b["src_ids"], splits["validation"][:4], strict=True):
    assert until_eos(row, tok.eos_id) == tok.encode("summarize: " + document)[:255]
  out = b["tgt_out_ids"][0]
  assert tok.decode(until_eos(out, tok.eos_id)) == splits["validation"][0][1]


@pytest.mark.parametrize("overrides, match", [
    ({"lead_sentences": 0}, r"lead_sentences=0 is not a sentence count.*integer >= 1"),
    ({"lead_sentences": 1.5}, r"lead_sentences=1.5 is not a sentence count"),
    ({"tgt_len": 1}, r"tgt_len must be an integer >= 4; got 1"),
    ({"source_prefix": 3}, r"'source_prefix'.*cannot be casted to type <class 'str'>"),
    ({"offline_eval_fraction": 1e-9},
     r"empty corpus: the offline summarization 'validation' split has no pairs"),
])
def test_bad_data_values_are_refused_with_the_fix(overrides, match):
  with pytest.raises(ValueError, match=match):
    zd.build_dataset({"task": "summarization", **overrides}, split="validation",
                     global_batch_size=2, seed=0)


def test_bad_input_errors_name_the_value_and_the_fix(tmp_path):
  cfg = zd.default_config("summarization")
  cfg.tgt_len = 1  # past resolve()'s generic check: the task's own
  with pytest.raises(ValueError, match=r"tgt_len=1 leaves no room for a summary.*tgt_len >= 2"):
    registry.task("summarization").check_data(cfg)
  with pytest.raises(ValueError, match=r"lead_sentences=True is not a sentence count"):
    sdata.lead("A. B.", True)
  with pytest.raises(zd.DataError, match=re.escape(
      "source_key='body' is no text feature of cnn_dailymail; set it to one of its text "
      "features ['article', 'highlights', 'id', 'publisher']")):
    sdata.resolve_keys("cnn_dailymail", _text_features(CNN), source_key="body")
  with pytest.raises(zd.DataError, match=r"my_news is not a known summarization dataset.*"
                     r"source_key .* and target_key .*\['body', 'title'\]"):
    sdata.resolve_keys("my_news", ["body", "title"])
  with pytest.raises(zd.DataError, match="source_key and target_key are both 'body'"):
    sdata.resolve_keys("my_news", ["body", "title"], "body", "body")
  (tmp_path / "pairs.tsv").write_text("no tab on this line\n")
  with pytest.raises(ValueError, match=r"empty corpus: .*pairs.tsv.*document<TAB>summary"):
    zd.build_dataset({"task": "summarization", "path": str(tmp_path / "pairs.tsv")},
                     split="train", global_batch_size=2, seed=0)


# ----------------------------------------------------------------------------------------------
# Training through the loop; eval ROUGE is the greedy decode's.

SRC_LEN, TGT_LEN, BATCH, PREFIX = 64, 24, 8, "summarize: "
MODELS = {  # one layer a side: the loop, eval and decoding do not depend on depth
    "transformer": ("transformer-base", dict(
        d_model=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=1, mlp_dim=64,
        max_len=SRC_LEN, dropout_rate=0.0)),
    "t5": ("t5-small", dict(
        d_model=32, num_heads=4, head_dim=8, num_encoder_layers=1, num_decoder_layers=1,
        mlp_dim=64, dropout_rate=0.0)),
}


def _run_config(preset, model):
  c = config_lib.base_config("summarization", preset)
  c.model.update(model)
  c.data.update(tokenizer="byte", src_len=SRC_LEN, tgt_len=TGT_LEN, source_prefix=PREFIX)
  c.train.update(batch_size=BATCH, num_steps=3, log_every=3, checkpoint_every=100,
                 progress_bar=False, plot=False)
  c.optim.update(lr=3e-3, warmup_steps=2)
  c.eval.update(every=0, num_batches=1, decode_batches=1)
  c.mesh.update(data=1)
  return c


def _greedy_by_full_forward(apply, params, src, start, eos, pad, n):
  """Argmax decoding without a cache: the whole decoder re-run on the prefix at every step
  (``apply(params, src, tgt)``: the model's full forward)."""
  tgt = np.full((src.shape[0], n + 1), pad, np.int32)
  tgt[:, 0] = start
  done = np.zeros(src.shape[0], bool)
  for i in range(n):
    token = np.asarray(jnp.argmax(apply(params, jnp.asarray(src), jnp.asarray(tgt))[:, i], -1))
    token = np.where(done, pad, token)
    tgt[:, i + 1] = token
    done |= token == eos
  return tgt[:, 1:]


def _noisy(params, scale=0.5):
  """``params`` plus N(0, scale) noise, drawn on the host (no per-shape device programs)."""
  rng = np.random.default_rng(7)
  return jax.tree.map(
      lambda x: jnp.asarray(np.asarray(x) + rng.normal(0.0, scale, x.shape), x.dtype), params)


@pytest.mark.parametrize("family", list(MODELS))
def test_tiny_model_trains_and_eval_reports_its_rouge_beside_the_lead(
    family, splits, tmp_path, monkeypatch):
  if family == "t5":
    pytest.importorskip("zoo.models.t5")
    monkeypatch.setattr(zd, "make_tokenizer", lambda cfg: NoBosBytes())  # T5: start from pad
  preset, model_fields = MODELS[family]
  c = _run_config(preset, model_fields)
  result = loop.train(c, str(tmp_path), devices=jax.devices()[:1])
  ev = result.eval
  assert result.step == 3 and np.isfinite(ev["loss"])
  for k in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
    assert 0 <= ev[k] <= 100 and 0 < ev[f"lead_{k}"] < 100, (k, ev)

  # The lead figures: Lead-1 of the first eval batch's documents as the model saw them
  # (truncated, prefix removed) against the references it was scored on (truncated).
  tok = NoBosBytes() if family == "t5" else ByteTokenizer()
  first = splits["validation"][:BATCH]
  room = SRC_LEN - 1 - len(tok.encode(PREFIX))
  docs = [tok.decode(tok.encode(d)[:room]) for d, _ in first]
  refs = [tok.decode(tok.encode(s)[: TGT_LEN - 1]) for _, s in first]
  lead = stask.lead_scores(docs, refs, 1)
  for k, v in lead.items():
    assert ev[k] == pytest.approx(v, abs=1e-9), k

  # The model's figures: ROUGE of greedy decoding of that batch, by a cacheless full forward.
  data = zd.build_dataset(c.data, split="validation", global_batch_size=BATCH, seed=0)
  model = registry.build(config_lib.model_config(c, data.info))
  src, start = next(iter(data))["src_ids"], data.info["decoder_start_id"]
  if family == "t5":  # the ids it decodes with are the data's, in its config too
    assert (model.config.decoder_start_id, model.config.eos_id) == (tok.pad_id, tok.eos_id)

  apply = jax.jit(lambda p, s, t: model.apply({"params": p}, s, t, deterministic=True))

  def greedy(params):
    ids = _greedy_by_full_forward(apply, params, src, start, tok.eos_id, tok.pad_id, TGT_LEN)
    return [tok.decode(until_eos(row, tok.eos_id)) for row in ids]

  want = metrics.rouge([stask.sentence_lines(h) for h in greedy(result.state.params)],
                       [stask.sentence_lines(r) for r in refs])
  for k, v in want.items():
    assert ev[k] == pytest.approx(v, abs=1e-9), k
  # Eval's decoding (translate_ids over the KV cache) is that argmax on any weights: here noisy
  # ones, whose summaries differ from row to row (3 steps of training emit one string).
  noisy = _noisy(result.state.params)
  got, got_refs, got_docs = stask.decode_summaries(model, noisy, data, data.info, num_batches=1)
  assert got == greedy(noisy) and len(set(got)) > 1
  assert (got_refs, got_docs) == (refs, docs)
  if family == "transformer":  # beam search and its length penalty reach translate_ids
    eval_cfg = {"decode_batches": 1, "num_beams": 2, "length_penalty": 0.6}
    scores = registry.task("summarization").decode_metrics(model, noisy, data, data.info, eval_cfg)
    ids = translate_ids(model, noisy, src, max_new_tokens=TGT_LEN, decoder_start_id=start,
                        eos_id=tok.eos_id, num_beams=2, length_penalty=0.6)
    beams = [stask.sentence_lines(tok.decode(until_eos(row, tok.eos_id))) for row in ids]
    want = metrics.rouge(beams, [stask.sentence_lines(r) for r in refs]) | lead
    assert scores == pytest.approx(want, abs=1e-9)
