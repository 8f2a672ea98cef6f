"""zoo.data TFDS sources, read without TensorFlow, on ``tfds.testing.mock_data``.

``mock_data`` (policy USE_CODE: features from the builder code, no metadata files) patches
``as_data_source``, so the same ``tfds.builder(...).as_data_source(split)`` path that reads
prepared array_record files runs here on generated examples. Nothing is downloaded.
"""

import sys

import numpy as np
import pytest

import zoo.data as zd

tfds = pytest.importorskip("tensorflow_datasets")
IGNORE = zd.IGNORE_INDEX



def tfds_cfg(task, name, data_dir, **kw):
  cfg = zd.default_config(task)
  cfg.source, cfg.tfds_name, cfg.data_dir = "tfds", name, str(data_dir)
  for k, v in kw.items():
    cfg[k] = v
  return cfg


@pytest.fixture
def mock():
  with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
    yield


CASES = [
    ("lm", "tiny_shakespeare", {}),
    ("lm", "lm1b", {}),
    ("translation", "wmt14_translate/de-en", {"tokenizer": "byte"}),
    ("translation", "wmt19_translate/zh-en", {"tokenizer": "byte", "source_lang": "zh"}),
    ("mlm_nsp", "imdb_reviews", {}),
    ("classification", "glue/sst2", {}),
    ("classification", "glue/mrpc", {}),
    ("classification", "imdb_reviews", {}),
    ("tagging", "conll2003", {}),
    ("image_classification", "mnist", {}),
    ("image_classification", "cifar10", {}),
    ("image_classification", "imagenet2012", {"image_size": 24}),
]


@pytest.mark.parametrize("task, name, extra", CASES, ids=[f"{t}-{n}" for t, n, _ in CASES])
def test_tfds_dataset_by_name(take, task, name, extra, tmp_path, mock):
  cfg = tfds_cfg(task, name, tmp_path, **extra)
  for split in ("train", "validation"):
    ds = zd.build_dataset(cfg, split=split, global_batch_size=4, seed=0)
    batches = take(ds, 2)
    assert batches, (name, split)
    b = batches[0]
    if task == "lm":
      assert b["input_ids"].shape == (4, 128) and b["weights"].any()
    elif task == "translation":
      assert (b["src_ids"].shape == (4, 64)
              and ds.info["source_lang"] == extra.get("source_lang", "en"))
      assert ds.info["target_lang"] in name
    elif task == "mlm_nsp":
      assert (b["mlm_targets"] != IGNORE).any() and set(b["nsp_labels"]) <= {0, 1}
    elif task == "classification":
      assert ds.info["num_classes"] == 2
      if name == "glue/mrpc":  # sentence pairs: two segments
        assert b["token_type_ids"].any()
    elif task == "tagging":
      assert ds.info["label_names"][:3] == ("O", "B-PER", "I-PER")
      real = b["labels"][b["labels"] != IGNORE]
      assert real.size and ((0 <= real) & (real < 9)).all()
    else:
      size = cfg.image_size
      assert b["images"].shape == (4, size, size, 3) and b["images"].dtype == np.float32
      assert ((0 <= b["labels"]) & (b["labels"] < ds.info["num_classes"])).all()
  assert "tensorflow" not in sys.modules  # read without TensorFlow


def test_tfds_iterator_resumes_exactly(take, tmp_path, mock):
  cfg = tfds_cfg("image_classification", "cifar10", tmp_path)
  full = take(zd.build_dataset(cfg, split="train", global_batch_size=4, seed=5), 6)
  ds = zd.build_dataset(cfg, split="train", global_batch_size=4, seed=5)
  take(ds, 2)
  again = zd.build_dataset(cfg, split="train", global_batch_size=4, seed=5)
  again.set_state(ds.get_state())
  for a, b in zip(full[2:], take(again, 4), strict=True):
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["labels"], b["labels"])


def test_trained_tokenizer_on_tfds_translation(tmp_path, mock):
  cfg = tfds_cfg("translation", "wmt14_translate/de-en", tmp_path, tokenizer="bpe",
                 vocab_size=300, tokenizer_dir=str(tmp_path / "tok"))
  ds = zd.build_dataset(cfg, split="validation", global_batch_size=2, seed=0)
  assert ds.info["vocab_size"] <= 300 and len(list((tmp_path / "tok").iterdir())) == 1


# ----------------------------------------------------------------------------------------------
# Errors: what is missing and how to get it (no mock: real TFDS lookups, no network).


def test_unknown_tfds_name_suggests_close_matches(tmp_path):
  with pytest.raises(zd.DataError, match="unknown TFDS dataset 'mnistt'.*mnist"):
    zd.build_dataset(tfds_cfg("image_classification", "mnistt", tmp_path), split="train",
                     global_batch_size=2, seed=0)


def test_missing_data_dir(tmp_path):
  with pytest.raises(zd.DataError, match="data_dir .*nowhere.* does not exist.*tfds build mnist"):
    zd.build_dataset(tfds_cfg("image_classification", "mnist", tmp_path / "nowhere"),
                     split="train", global_batch_size=2, seed=0)


def test_unprepared_dataset(tmp_path):
  with pytest.raises(zd.DataError,
                     match="tiny_shakespeare is not prepared in .*--file_format=array_record"):
    zd.build_dataset(tfds_cfg("lm", "tiny_shakespeare", tmp_path), split="train",
                     global_batch_size=2, seed=0)


def test_unprepared_manual_dataset_names_the_files(tmp_path):
  with pytest.raises(zd.DataError,
                     match=r"(?s)manual download.*downloads/manual.*ILSVRC2012_img_train\.tar"):
    zd.build_dataset(tfds_cfg("image_classification", "imagenet2012", tmp_path), split="train",
                     global_batch_size=2, seed=0)
  with pytest.raises(zd.DataError, match=r"needs a manual download into .*manual"):
    zd.build_dataset(tfds_cfg("image_classification", "imagenet2012", tmp_path, download=True),
                     split="train", global_batch_size=2, seed=0)


def test_preparing_a_builder_that_needs_tensorflow(tmp_path, monkeypatch):
  # What TFDS raises when a builder's generation code touches its lazy `tf` import.
  def needs_tf(self, **kwargs):
    raise ModuleNotFoundError("No module named 'tensorflow'")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", needs_tf)
  with pytest.raises(zd.DataError,
                     match="preparing mnist needs TensorFlow.*pip install tensorflow"):
    zd.build_dataset(tfds_cfg("image_classification", "mnist", tmp_path, download=True),
                     split="train", global_batch_size=2, seed=0)
