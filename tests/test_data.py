"""zoo.data: configs, offline defaults end to end, exact resume, process sharding, bad input."""

import json

import numpy as np
import pytest

import zoo.data as zd
from zoo import registry
from zoo.data import default_config, offline
from zoo.data.iteration import Layout
from zoo.data.tokenizers import ByteTokenizer

IGNORE = zd.IGNORE_INDEX




@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
  images, _ = offline.sklearn_digits()
  path = tmp_path_factory.mktemp("npz") / "twelve.npz"
  np.savez(path, images=images[:12, ..., 0], labels=np.arange(12))  # label = identity
  return path


# ----------------------------------------------------------------------------------------------
# Configs.


def test_default_config_has_every_interface_key():
  for task in registry.task_names():
    cfg = default_config(task)
    for key in ("task", "source", "tfds_name", "data_dir", "shuffle", "path"):
      assert key in cfg, (task, key)
    assert cfg.source == "offline" and cfg.tfds_name
    assert ("image_size" in cfg) == (task == "image_classification")
  assert "packing" in default_config("lm")
  assert {"src_len", "tgt_len", "source_lang"} <= set(default_config("translation"))


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"task": "lmm"}, "unknown task 'lmm'.*lm"),
        ({"task": "lm", "seq_lenn": 8}, "seq_lenn.*seq_len"),
        ({"task": "lm", "source": "hf"}, "unknown data source 'hf'"),
        ({"task": "lm", "seq_len": 2}, "seq_len must be"),
        ({"task": "mlm_nsp", "mask_token_rate": 0.95}, "mask_token_rate \\+ random_token_rate"),
        ({"seq_len": 8}, "needs a `task` key"),
    ],
)
def test_bad_config_is_named(bad, match):
  with pytest.raises(ValueError, match=match):
    zd.build_dataset(bad, split="train", global_batch_size=2, seed=0)


def test_batch_not_divisible_by_processes():
  with pytest.raises(ValueError, match="multiple of process_count=4"):
    zd.build_dataset({"task": "image_classification"}, split="train", global_batch_size=6,
                     seed=0, process_count=4)


# ----------------------------------------------------------------------------------------------
# Offline defaults, end to end.


def test_offline_lm_is_stdlib_python(take):
  ds = zd.build_dataset(default_config("lm"), split="train", global_batch_size=4, seed=0)
  batches = take(ds, 2)
  tok = ds.info["tokenizer"]
  assert ds.info["vocab_size"] == 264 and ds.info["pad_id"] == 0
  for b in batches:
    assert set(b) == {"input_ids", "targets", "weights", "positions", "segment_ids"}
    for k in ("input_ids", "targets", "positions", "segment_ids"):
      assert b[k].shape == (4, 128) and b[k].dtype == np.int32
    assert b["weights"].dtype == np.float32 and b["weights"].all()  # train rows are full
  text = " ".join(tok.decode(r) for b in batches for r in b["input_ids"])
  assert any(w in text for w in ("def ", "return", "import ", "self")), text[:300]


def test_offline_translation_is_english_to_french_number_names(take):
  from num2words import num2words

  cfg = default_config("translation", max_number=3000, tokenizer="byte")
  truth = {num2words(n, lang="en"): num2words(n, lang="fr") for n in range(3000)}
  for split in ("train", "validation"):
    ds = zd.build_dataset(cfg, split=split, global_batch_size=4, seed=0)
    tok = ds.info["tokenizer"]
    for b in take(ds, 2):
      assert b["src_ids"].shape == (4, 64) and b["tgt_in_ids"].shape == (4, 64)
      for s, t_in, t_out, w in zip(b["src_ids"], b["tgt_in_ids"], b["tgt_out_ids"], b["weights"]):
        n = int(w.sum())
        assert t_in[0] == tok.bos_id and t_out[n - 1] == tok.eos_id
        np.testing.assert_array_equal(t_in[1:n], t_out[: n - 1])
        assert truth[tok.decode(s)] == tok.decode(t_out)


def test_offline_mlm_nsp_layout(take):
  ds = zd.build_dataset(default_config("mlm_nsp"), split="train", global_batch_size=4, seed=0)
  for b in take(ds, 2):
    assert b["input_ids"].shape == b["mlm_targets"].shape == (4, 128)
    assert b["nsp_labels"].shape == (4,) and set(b["nsp_labels"]) <= {0, 1}
    assert (b["input_ids"][:, 0] == ByteTokenizer.cls_id).all()
    n_sep = (b["input_ids"] == ByteTokenizer.sep_id).sum(1)
    np.testing.assert_array_equal(n_sep, 2)
    assert ((b["mlm_targets"] != IGNORE) <= (b["attention_mask"] == 1)).all()
    # token types: 0 up to and including the first [SEP], 1 after it on real tokens.
    for ids, types, attn in zip(b["input_ids"], b["token_type_ids"], b["attention_mask"]):
      first_sep = int(np.flatnonzero(ids == ByteTokenizer.sep_id)[0])
      assert not types[: first_sep + 1].any() and types[first_sep + 1 : attn.sum()].all()


def test_offline_classification_is_docstring_topic(take):
  ds = zd.build_dataset(default_config("classification"), split="validation",
                        global_batch_size=8, seed=0)
  assert ds.info["label_names"] == offline.TOPIC_PACKAGES and ds.info["num_classes"] == 9
  b = take(ds, 1)[0]
  assert b["labels"].dtype == np.int32 and ((0 <= b["labels"]) & (b["labels"] < 9)).all()
  text = ds.info["tokenizer"].decode(b["input_ids"][0])
  assert len(text.split()) >= 3 and any(c.isalpha() for c in text)
  # The label really is the package the docstring comes from.
  docs = {" ".join(d.split()): p for p, d in offline.stdlib_docstrings()}
  for ids, label in zip(b["input_ids"], b["labels"]):
    text = ds.info["tokenizer"].decode(ids)
    owners = {p for d, p in docs.items() if d.startswith(text)}
    assert offline.TOPIC_PACKAGES[label] in owners


def test_offline_tagging_is_word_segmentation(take):
  ds = zd.build_dataset(default_config("tagging"), split="train", global_batch_size=4, seed=0)
  assert ds.info["label_names"] == ("B", "M", "E", "S")
  tok = ds.info["tokenizer"]
  for b in take(ds, 2):
    for ids, labels, attn in zip(b["input_ids"], b["labels"], b["attention_mask"]):
      n = attn.sum()
      assert labels[0] == IGNORE and labels[n - 1] == IGNORE and (labels[n:] == IGNORE).all()
      text = tok.decode(ids[1 : n - 1])
      assert " " not in text and len(text) == n - 2
      tags = "".join("BMES"[t] for t in labels[1 : n - 1])
      # A well-formed B/M/E/S sequence: words are S or B M* E.
      assert all(w in ("S",) or (w[0] == "B" and w[-1] == "E" and set(w[1:-1]) <= {"M"})
                 for w in tags.replace("S", " S ").replace("E", "E ").split()), tags


def test_offline_images_are_sklearn_digits(take):
  cfg = default_config("image_classification", image_size=16, num_channels=3)
  ds = zd.build_dataset(cfg, split="train", global_batch_size=4, seed=0)
  assert ds.info["num_classes"] == 10
  for b in take(ds, 2):
    x = b["images"]
    assert x.shape == (4, 16, 16, 3) and x.dtype == np.float32
    assert b["labels"].dtype == np.int32 and set(b["labels"]) <= set(range(10))
    assert -1.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.3  # normalised real strokes
    np.testing.assert_array_equal(x[..., 0], x[..., 2])  # grayscale repeated
  gray = zd.build_dataset(default_config("image_classification", num_channels=1, augment=False),
                          split="validation", global_batch_size=2, seed=0)
  assert take(gray, 1)[0]["images"].shape == (2, 32, 32, 1)


def test_offline_splits_are_disjoint_and_deterministic():
  train = offline.lm_documents(None, "train", 0.1)
  val = offline.lm_documents(None, "validation", 0.1)
  assert not set(train) & set(val) and 0.05 < len(val) / (len(train) + len(val)) < 0.15
  assert val == offline.lm_documents(None, "validation", 0.1)


# ----------------------------------------------------------------------------------------------
# Exact resume and sharding.

RESUME_CASES = {
    "lm_packed": lambda c, n: default_config("lm", path=str(c), seq_len=32),
    "lm_unpacked": lambda c, n: default_config("lm", path=str(c), seq_len=32, packing=False),
    "mlm_nsp": lambda c, n: default_config("mlm_nsp", path=str(c), seq_len=32),
    "translation_bucketed": lambda c, n: default_config(
        "translation", tokenizer="byte", max_number=60, src_len=32, tgt_len=32, bucket_window=3),
    "images_augmented": lambda c, n: default_config(
        "image_classification", path=str(n), image_size=12, offline_eval_fraction=1e-6),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_restored_iterator_equals_uninterrupted(take, case, corpus, digits_npz):
  cfg = RESUME_CASES[case](corpus, digits_npz)
  make = lambda: zd.build_dataset(cfg, split="train", global_batch_size=4, seed=7)
  ds = make()
  full = take(ds, 12)  # several epochs for the small cases
  first = make()
  take(first, 5)
  state = json.loads(json.dumps(first.get_state()))  # what goes into a checkpoint
  resumed = make()
  resumed.set_state(state)
  rest = take(resumed, 7)
  for a, b in zip(full[5:], rest, strict=True):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=f"{case}: {k}")
  # The stream is not trivially constant: consecutive batches differ.
  assert any(not np.array_equal(full[0][k], full[1][k]) for k in full[0])


def test_state_of_another_configuration_is_refused(take, corpus):
  cfg = default_config("lm", path=str(corpus), seq_len=32)
  a = zd.build_dataset(cfg, split="train", global_batch_size=4, seed=0)
  take(a, 2)
  b = zd.build_dataset(cfg, split="train", global_batch_size=8, seed=0)
  with pytest.raises(ValueError, match="batch_size: saved 4 vs now 8"):
    b.set_state(a.get_state())


def test_record_order_is_a_fresh_permutation_each_epoch():
  n = 24
  records = Layout(n, seed=1, shuffle=True, repeat=True, global_batch_size=4).records()
  epochs = [[records[e * n + p][1] for p in range(n)] for e in range(3)]
  for epoch in epochs:
    assert sorted(epoch) == list(range(n))
  assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != list(range(n))
  assert [records[p][0] for p in range(5)] == list(range(5))  # (stream position, record)


GLOBAL_CASES = {
    "lm_packed": lambda c, n: default_config("lm", path=str(c), seq_len=32),
    "mlm_nsp": lambda c, n: default_config("mlm_nsp", path=str(c), seq_len=32),
    "translation_bucketed": RESUME_CASES["translation_bucketed"],
    "images_augmented": lambda c, n: default_config("image_classification", path=str(n),
                                             image_size=12, offline_eval_fraction=0.5),
}


@pytest.mark.parametrize("case", sorted(GLOBAL_CASES))
def test_global_batches_do_not_depend_on_the_process_count(take, case, corpus, digits_npz):
  """Global batch N is the same rows for 1, 2 or 4 processes, on train and eval, and a state
  saved by one process count resumes on another."""
  cfg = GLOBAL_CASES[case](corpus, digits_npz)
  make = lambda split, i, n: zd.build_dataset(cfg, split=split, global_batch_size=4, seed=5,
                                              process_index=i, process_count=n)
  one = take(make("train", 0, 1), 6)
  for n in (2, 4):
    shards = [take(make("train", i, n), 6) for i in range(n)]
    for step in range(6):
      for k in one[step]:
        np.testing.assert_array_equal(
            one[step][k], np.concatenate([s[step][k] for s in shards]), err_msg=f"{n} {k}")
  single = make("train", 0, 1)
  take(single, 3)
  state = json.loads(json.dumps(single.get_state()))
  second = make("train", 1, 2)
  second.set_state(state)  # 1 process saved, process 1 of 2 resumes
  for step, batch in enumerate(take(second, 3), start=3):
    for k in batch:
      np.testing.assert_array_equal(batch[k], one[step][k][2:], err_msg=k)
  whole = list(make("validation", 0, 1))[:3]
  halves = [list(make("validation", i, 2))[:3] for i in range(2)]
  for step, batch in enumerate(whole):
    for k in batch:
      np.testing.assert_array_equal(
          batch[k], np.concatenate([h[step][k] for h in halves]), err_msg=f"eval {k}")


def test_process_shards_disjoint_and_covering_through_batches(take, digits_npz):
  cfg = default_config("image_classification", path=str(digits_npz), image_size=8,
                offline_eval_fraction=1e-6)
  per_process = []
  for i in range(3):
    ds = zd.build_dataset(cfg, split="train", global_batch_size=6, seed=3, process_index=i,
                          process_count=3)
    batches = take(ds, 4)  # 2 epochs: 12 records / 3 processes / 2 rows = 2 batches each
    assert all(b["labels"].shape == (2,) for b in batches)
    per_process.append([np.concatenate([b["labels"] for b in batches[:2]]),
                        np.concatenate([b["labels"] for b in batches[2:]])])
  for epoch in range(2):
    labels = np.concatenate([p[epoch] for p in per_process])
    assert sorted(labels.tolist()) == list(range(12)), epoch


def test_eval_split_is_sharded_once_with_padding():
  cfg = default_config("translation", tokenizer="byte", max_number=500)
  whole = zd.build_dataset(cfg, split="validation", global_batch_size=8, seed=0)
  tok = whole.info["tokenizer"]

  def rows(ds):
    out = []
    for b in ds:
      out += [tok.decode(s) for s, w in zip(b["src_ids"], b["weights"]) if w.any()]
    return out

  everything = rows(whole)
  assert len(everything) == whole.info["num_records"] == len(set(everything))
  assert rows(whole) == everything  # each iter() is one full pass
  shards = [zd.build_dataset(cfg, split="validation", global_batch_size=8, seed=0,
                             process_index=i, process_count=2) for i in range(2)]
  counts = [len(list(s)) for s in shards]
  assert counts[0] == counts[1] == shards[0].num_batches()
  a, b = rows(shards[0]), rows(shards[1])
  assert not set(a) & set(b) and sorted(a + b) == sorted(everything)


# ----------------------------------------------------------------------------------------------
# Bad input.


def test_empty_corpus_is_named(tmp_path):
  (tmp_path / "only.bin").write_bytes(b"\xff\xfe\x00" * 10)
  with pytest.raises(ValueError, match="empty corpus.*only|empty corpus: found no"):
    zd.build_dataset(default_config("lm", path=str(tmp_path)), split="train",
                     global_batch_size=2, seed=0)
  with pytest.raises(ValueError, match="does not exist"):
    zd.build_dataset(default_config("lm", path=str(tmp_path / "nope")), split="train",
                     global_batch_size=2, seed=0)


def test_wrong_image_shape_is_named(tmp_path):
  bad = tmp_path / "rgba.npz"
  np.savez(bad, images=np.zeros((4, 8, 8, 4), np.uint8), labels=np.arange(4))
  with pytest.raises(ValueError, match=r"shape \(4, 8, 8, 4\).*\[N, H, W, 1 or 3\]"):
    zd.build_dataset(default_config("image_classification", path=str(bad)), split="train",
                     global_batch_size=2, seed=0)
  from zoo.data.images import as_hwc

  with pytest.raises(ValueError, match=r"shape \(2, 8, 8, 3\).*1 \(grayscale\) or 3 \(RGB\)"):
    as_hwc(np.zeros((2, 8, 8, 3)))


def test_unknown_offline_split():
  with pytest.raises(ValueError, match="splits 'train' and 'validation'"):
    zd.build_dataset({"task": "lm"}, split="test", global_batch_size=2, seed=0)
