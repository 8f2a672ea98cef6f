"""T5's span corruption (zoo/tasks/span_corruption.py, zoo/data/span_corruption.py): the length
helper against T5's figures and an independent transcription, the noise mask's properties,
inputs/targets that give the chunk back, full rows, determinism over seeds and process counts,
the errors, sentinels in trained vocabularies, and a few training steps of an encoder-decoder."""

import hashlib

import jax
import numpy as np
import pytest

import zoo.data as zd
from zoo import registry
from zoo.data import offline
from zoo.data import span_corruption as sc
from zoo.data.config import resolve
from zoo.data.tokenizers import ByteTokenizer, sentinel_ids, train_tokenizer
from zoo.training import config as config_lib
from zoo.training import loop

SRC_LEN, SENTINELS = 64, 12  # chunks of 70 tokens, 3 noise spans, 14 targets


def reference_lengths(inputs_length, density, mean_span):
  """An independent transcription of T5's random_spans_helper (one extra token per span):
  the longest chunk whose inputs (kept tokens + a sentinel per span + EOS) fit."""

  def inputs_and_targets(n):
    noise = int(np.round(n * density))
    spans = int(np.round(noise / mean_span))
    return n - noise + spans + 1, noise + spans + 1

  n = max(n for n in range(inputs_length, 4 * inputs_length)
          if inputs_and_targets(n)[0] <= inputs_length)
  targets = inputs_and_targets(n)[1]
  if density == 0.5 and targets > inputs_length:
    n, targets = n - 1, targets - 1
  return n, targets


def test_lengths_match_t5_figures_and_a_transcription():
  assert sc.random_spans_lengths(512, 0.15, 3.0) == (568, 114)  # T5's and HF's published pair
  assert sc.random_spans_lengths(128, 0.15, 3.0) == reference_lengths(128, 0.15, 3.0) == (141, 29)
  for length in (64, 100, 256, 1024):
    for density, mean in ((0.15, 3.0), (0.3, 2.5), (0.5, 3.0), (0.15, 8.0)):
      assert sc.random_spans_lengths(length, density, mean) == reference_lengths(
          length, density, mean), (length, density, mean)


def runs(mask):
  """Lengths and noise flags of the maximal runs of equal values."""
  edges = np.flatnonzero(np.diff(mask.astype(int))) + 1
  bounds = np.concatenate([[0], edges, [len(mask)]])
  return np.diff(bounds), mask[bounds[:-1]]


@pytest.mark.parametrize("length", [568, 141, 70, 37])
def test_noise_mask_counts_alternation_and_span_lengths(length):
  noise = round(length * 0.15)
  spans = max(1, round(noise / 3.0))
  first = []
  for seed in range(400):
    mask = sc.noise_mask(length, 0.15, 3.0, np.random.default_rng(seed))
    assert mask.dtype == bool and mask.shape == (length,) and mask.sum() == noise
    lengths, is_noise = runs(mask)
    # Non-noise first, then alternating, ending with noise: 2 runs per span.
    assert len(lengths) == 2 * spans and not is_noise[0] and is_noise[-1]
    assert (is_noise[1::2]).all() and not is_noise[::2].any()
    first.append(lengths[1])
  # A uniformly random segmentation: each span's expected length is noise / spans (~3).
  assert np.mean(first) == pytest.approx(noise / spans, rel=0.12)
  assert len(set(first)) > 2  # the span lengths vary


def test_span_lengths_average_three_over_many_draws():
  lengths = np.concatenate([
      runs(sc.noise_mask(568, 0.15, 3.0, np.random.default_rng(s)))[0][1::2] for s in range(200)
  ])
  assert lengths.mean() == pytest.approx(85 / 28) and lengths.min() >= 1 and lengths.max() > 6


def restore(inputs, targets, sentinels):
  """The chunk back: each sentinel of the inputs replaced by what follows it in the targets."""
  where = {s: i for i, s in enumerate(sentinels)}
  pieces, cur = {}, None
  for t in targets[:-1]:
    if t in where:
      cur = where[t]
      pieces[cur] = []
    else:
      pieces[cur].append(t)
  out = []
  for t in inputs[:-1]:
    out += pieces[where[t]] if t in where else [t]
  return out


def test_inputs_and_targets_give_the_chunk_back_with_sentinels_in_order():
  sentinels = list(range(1000, 1100))
  for seed in range(100):
    rng = np.random.default_rng(seed)
    length = int(rng.integers(2, 600))
    tokens = rng.integers(5, 900, size=length).astype(np.int32)
    mask = sc.noise_mask(length, 0.15, 3.0, rng)
    inputs, targets = sc.corrupt(tokens, mask, sentinels, eos_id=2)
    assert inputs[-1] == targets[-1] == 2
    assert restore(inputs.tolist(), targets.tolist(), sentinels) == tokens.tolist()
    k = len(runs(mask)[0]) // 2
    used_in = [t for t in inputs if t >= 1000]
    used_out = [t for t in targets if t >= 1000]
    assert used_in == used_out == sentinels[:k]  # <extra_id_0>, <extra_id_1>, ... in order
    assert targets[0] == sentinels[0]
    if length == sc.random_spans_lengths(512, 0.15, 3.0)[0]:
      assert (len(inputs), len(targets)) == (512, 114)
  tokens, (n, t) = np.arange(10, 578), sc.random_spans_lengths(512, 0.15, 3.0)
  inputs, targets = sc.corrupt(tokens, sc.noise_mask(n, 0.15, 3.0, np.random.default_rng(0)),
                               sentinels, eos_id=2)
  assert (len(inputs), len(targets)) == (512, t)  # a full chunk fills both exactly


# ----------------------------------------------------------------------------------------------
# The dataset.


@pytest.fixture(scope="module")
def tokdir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("span_tok"))


def data_cfg(corpus, tokdir, **kw):
  return zd.default_config(
      "span_corruption", path=str(corpus), src_len=SRC_LEN, vocab_size=300,
      num_sentinels=SENTINELS, tokenizer_dir=tokdir, **kw,
  )


def stream(docs, tok):
  out = []
  for d in docs:
    out += [*tok.encode(d), tok.eos_id]
  return out


def test_rows_fill_both_lengths_and_give_the_token_stream_back(take, corpus, tokdir):
  cfg = data_cfg(corpus, tokdir, shuffle=False)
  ds = zd.build_dataset(cfg, split="train", global_batch_size=4, seed=3)
  info, tok = ds.info, ds.info["tokenizer"]
  tokens_length, targets_length = sc.random_spans_lengths(SRC_LEN, 0.15, 3.0)
  assert (info["tokens_length"], info["tgt_len"]) == (tokens_length, targets_length)
  assert info["decoder_start_id"] == tok.bos_id == 1  # trained vocabularies have a BOS
  sentinels = info["sentinel_ids"]
  assert len(sentinels) == SENTINELS and not set(sentinels) & {tok.pad_id, tok.eos_id}
  batches = take(ds, 6)
  chunks = []
  for b in batches:
    assert b["src_ids"].shape == (4, SRC_LEN) and b["tgt_out_ids"].shape == (4, targets_length)
    assert (b["src_ids"] != tok.pad_id).all() and b["weights"].all()  # no padding at all
    assert (b["src_ids"][:, -1] == tok.eos_id).all()
    assert (b["tgt_out_ids"][:, -1] == tok.eos_id).all()
    np.testing.assert_array_equal(b["tgt_in_ids"][:, 0], info["decoder_start_id"])
    np.testing.assert_array_equal(b["tgt_in_ids"][:, 1:], b["tgt_out_ids"][:, :-1])
    for src, tgt in zip(b["src_ids"].tolist(), b["tgt_out_ids"].tolist(), strict=True):
      chunk = restore(src, tgt, sentinels)
      assert len(chunk) == tokens_length
      chunks += chunk
  docs = offline.lm_documents(str(corpus), "train", 0.1)
  assert chunks == stream(docs, tok)[: len(chunks)]  # EOS-separated documents, nothing lost


def test_eval_pass_covers_the_stream_and_pads_the_last_chunk(corpus, tokdir):
  cfg = data_cfg(corpus, tokdir, offline_eval_fraction=0.3)
  ds = zd.build_dataset(cfg, split="validation", global_batch_size=4, seed=0)
  tok, sentinels = ds.info["tokenizer"], ds.info["sentinel_ids"]
  batches = list(ds)
  assert len(batches) == ds.num_batches() >= 2
  chunks = []
  for b in batches:
    for src, tgt, w in zip(b["src_ids"], b["tgt_out_ids"], b["weights"], strict=True):
      if w.any():
        n, t = int((src != tok.pad_id).sum()), int(w.sum())
        chunks += restore(src[:n].tolist(), tgt[:t].tolist(), sentinels)
  docs = offline.lm_documents(str(corpus), "validation", 0.3)
  assert chunks == stream(docs, tok)
  assert not batches[-1]["weights"].all()  # the last chunk is short


def test_same_seed_same_rows_and_any_process_count(take, corpus, tokdir):
  cfg = data_cfg(corpus, tokdir)
  one = take(zd.build_dataset(cfg, split="train", global_batch_size=4, seed=7), 4)
  again = take(zd.build_dataset(cfg, split="train", global_batch_size=4, seed=7), 4)
  other = take(zd.build_dataset(cfg, split="train", global_batch_size=4, seed=8), 4)
  halves = [take(zd.build_dataset(cfg, split="train", global_batch_size=4, seed=7,
                                  process_index=i, process_count=2), 4) for i in range(2)]
  for k in range(4):
    for key in one[k]:
      np.testing.assert_array_equal(one[k][key], again[k][key])
      joined = np.concatenate([halves[0][k][key], halves[1][k][key]])
      np.testing.assert_array_equal(one[k][key], joined)
  assert any((a["src_ids"] != b["src_ids"]).any() for a, b in zip(one, other, strict=True))


def test_resume_continues_the_same_rows(take, corpus, tokdir):
  cfg = data_cfg(corpus, tokdir)
  full = take(zd.build_dataset(cfg, split="train", global_batch_size=4, seed=1), 5)
  ds = zd.build_dataset(cfg, split="train", global_batch_size=4, seed=1)
  take(ds, 2)
  resumed = zd.build_dataset(cfg, split="train", global_batch_size=4, seed=1)
  resumed.set_state(ds.get_state())
  for a, b in zip(full[2:], take(resumed, 3), strict=True):
    np.testing.assert_array_equal(a["src_ids"], b["src_ids"])
    np.testing.assert_array_equal(a["tgt_out_ids"], b["tgt_out_ids"])


def test_c4_text_field_is_read_by_name(monkeypatch):
  seen = {}

  def documents(cfg, split):
    seen.update(name=cfg.tfds_name, keys=tuple(cfg.text_keys), split=split)
    return ["a document"]

  monkeypatch.setattr(sc.tfds_src, "documents", documents)
  cfg = resolve(zd.default_config("span_corruption", source="tfds"))
  assert sc.documents(cfg, "train") == ["a document"]
  assert seen == {"name": "c4/en", "keys": ("text",), "split": "train"}


# ----------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("overrides, message", [
    (dict(targets_length=13), r"targets_length=13 cannot hold .* = 14\. Leave targets_length None"),
    (dict(noise_density=0.0), r"noise_density must be in \(0, 1\).*got 0.0"),
    (dict(mean_noise_span_length=0.5), r"mean_noise_span_length must be >= 1"),
    (dict(mean_noise_span_length=50.0), r"in 0 spans: nothing to predict"),
    (dict(mean_noise_span_length=1.0), r"fewer than the 64 inputs"),
    (dict(noise_density=0.9), r"only \d+ other tokens to separate them"),
    (dict(num_sentinels=2), r"num_sentinels=2 .* has 3 noise spans.*num_sentinels >= 3"),
])
def test_bad_lengths_and_counts_fail_before_any_data(overrides, message, monkeypatch):
  monkeypatch.setattr(offline, "lm_documents", lambda *a: pytest.fail("data was read"))
  cfg = zd.default_config("span_corruption", src_len=SRC_LEN, **overrides)
  with pytest.raises(ValueError, match=message):
    zd.build_dataset(cfg, split="train", global_batch_size=2, seed=0)


def test_tokenizers_without_enough_sentinels_are_refused(corpus, tmp_path):
  with pytest.raises(ValueError, match=r"tokenizer 'byte' has 0 sentinel tokens.*needs 3.*"
                                       r"tokenizer='sentencepiece' or 'bpe'.*T5 tokenizer"):
    zd.build_dataset(data_cfg(corpus, str(tmp_path), tokenizer="byte"), split="train",
                     global_batch_size=2, seed=0)
  few = train_tokenizer("bpe", offline.lm_documents(str(corpus), "train", 0.1), vocab_size=300,
                        cache_dir=tmp_path, cache_key="few",
                        extra_specials=sc.sentinel_tokens(2))
  path = next(tmp_path.glob("*.json"))
  assert len(sentinel_ids(few)) == 2
  with pytest.raises(ValueError, match=r"has 2 sentinel tokens \(<extra_id_N>\) but needs 3"):
    zd.build_dataset(data_cfg(corpus, str(tmp_path), tokenizer=str(path)), split="train",
                     global_batch_size=2, seed=0)


# ----------------------------------------------------------------------------------------------
# Sentinels in trained vocabularies (the Task.special_tokens hook).


@pytest.mark.parametrize("kind, first", [("sentencepiece", 4), ("bpe", 7)])
def test_trained_vocabulary_has_the_sentinels_other_tasks_unchanged(corpus, tmp_path, kind, first):
  cfg = data_cfg(corpus, str(tmp_path / "span"), tokenizer=kind)
  tok = zd.make_tokenizer(cfg)
  assert sentinel_ids(tok) == tuple(range(first, first + SENTINELS))  # after the usual specials
  assert sc.sentinel_tokens(3) == ("<extra_id_0>", "<extra_id_1>", "<extra_id_2>")
  assert sentinel_ids(tok)[5] in tok.encode("x <extra_id_5> y")  # one token, not pieces
  # The lm task's vocabulary: no sentinels, and the cache file name of the old key formula.
  lm_cfg = zd.default_config("lm", path=str(corpus), tokenizer=kind, vocab_size=300,
                             tokenizer_dir=str(tmp_path / "lm"))
  lm_tok = zd.make_tokenizer(lm_cfg)
  key = f"lm|offline:{corpus}|None|()|20000"
  digest = hashlib.sha1(f"{kind}|300|{key}".encode()).hexdigest()[:12]
  (path,) = (tmp_path / "lm").iterdir()
  assert path.name == f"{kind}-300-{digest}{'.json' if kind == 'bpe' else '.model'}"
  assert sentinel_ids(lm_tok) == ()
  plain = train_tokenizer(kind, offline.lm_documents(str(corpus), "train", 0.1), vocab_size=300,
                          cache_dir=tmp_path / "plain", cache_key="p")
  text = offline.lm_documents(str(corpus), "validation", 0.1)[0]
  assert lm_tok.encode(text) == plain.encode(text)  # the same vocabulary as before the hook


def test_sentinel_ids_prefers_the_tokenizer_attribute():
  class T5Like(ByteTokenizer):
    sentinel_ids = (263, 262, 261)

  assert sentinel_ids(T5Like()) == (263, 262, 261)
  assert sentinel_ids(ByteTokenizer()) == ()


def test_sentinel_ids_are_in_name_order_not_id_order(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers

  words = ["<pad>", "</s>", "<unk>", "the", "cat"]
  hf = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  hf.pre_tokenizer = pre_tokenizers.Whitespace()
  hf.add_special_tokens([f"<extra_id_{n}>" for n in reversed(range(4))])  # T5: id_0 is last
  hf.save(str(tmp_path / "tokenizer.json"))
  path = str(tmp_path / "tokenizer.json")
  tok = zd.make_tokenizer({"task": "span_corruption", "tokenizer": path})
  assert sentinel_ids(tok) == (8, 7, 6, 5)


def test_task_is_registered_and_the_transformer_serves_it():
  assert "span_corruption" in registry.task_names()
  assert "span_corruption" in registry.get("transformer").tasks
  cfg = zd.default_config("span_corruption")
  assert (cfg.src_len, cfg.noise_density, cfg.mean_noise_span_length, cfg.num_sentinels) == (
      512, 0.15, 3.0, 100)
  assert cfg.tokenizer == "sentencepiece" and cfg.tfds_name == "c4/en"


# ----------------------------------------------------------------------------------------------
# Training through the one loop.


TINY = dict(d_model=32, num_heads=4, mlp_dim=64, num_encoder_layers=1, num_decoder_layers=1,
            dropout_rate=0.0)  # one layer a side: the task's wiring does not depend on depth


@pytest.mark.parametrize("preset, model", [
    ("transformer-base", dict(max_len=SRC_LEN)),
    ("t5-small", dict(head_dim=8)),
], ids=["transformer", "t5"])
def test_an_encoder_decoder_trains_on_span_corruption(corpus, tokdir, tmp_path, preset, model):
  c = config_lib.base_config("span_corruption", preset)
  c.model.update(**TINY, **model)
  c.data.update(path=str(corpus), src_len=SRC_LEN, vocab_size=300, num_sentinels=SENTINELS,
                tokenizer_dir=tokdir)
  c.train.update(batch_size=8, num_steps=12, log_every=1, checkpoint_every=12,
                 progress_bar=False, plot=False)
  c.train.compiler_options.xla_backend_optimization_level = 0
  c.optim.update(lr=1e-2, warmup_steps=2)
  c.eval.update(every=0, num_batches=2)
  result = loop.train(c, str(tmp_path), devices=jax.devices()[:1])
  losses = np.array([result.losses[k] for k in sorted(result.losses)])
  assert np.isfinite(losses).all() and losses[-3:].mean() < losses[:3].mean() - 0.5
  assert {"loss", "nll", "accuracy", "perplexity"} <= set(result.eval)
  assert np.isfinite(result.eval["loss"]) and 0 <= result.eval["accuracy"] <= 1


def test_model_config_takes_vocabulary_and_t5_ids_from_the_data(corpus, tokdir):
  info = zd.build_dataset(data_cfg(corpus, tokdir), split="train", global_batch_size=2,
                          seed=0).info
  t5 = config_lib.base_config("span_corruption", "t5-small")
  t5.model.update(**TINY, head_dim=8)
  cfg = config_lib.model_config(t5, info)
  assert (cfg.vocab_size, cfg.pad_id, cfg.eos_id, cfg.decoder_start_id) == (
      info["vocab_size"], 0, info["eos_id"], info["decoder_start_id"]) == (300, 0, 2, 1)
  tr = config_lib.base_config("span_corruption", "transformer-base")
  tr.model.update(**TINY, max_len=SRC_LEN)
  assert config_lib.model_config(tr, info).vocab_size == 300  # no T5 fields: the rest skipped
