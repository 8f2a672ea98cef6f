"""TFDS datasets by catalog name, read without TensorFlow.

``tfds.builder(name, data_dir=..., file_format="array_record").as_data_source(split)`` gives a
random-access sequence of numpy/bytes examples; TensorFlow is needed only to *prepare* most
datasets (``tfds build``), never to read prepared ``array_record`` files. ``DATASETS`` lists the
field mapping of the datasets supported by name; other catalog names work when their features
follow the same conventions (``Text`` fields, a ``ClassLabel`` ``label``, an ``Image`` ``image``).
"""

from __future__ import annotations

import pathlib
from typing import Any

from zoo import registry
from zoo.data.offline import LazySeq, text_blocks

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# name (or name before "/") -> defaults: splits, which fields hold the text / tokens / labels.
DATASETS: dict[str, dict[str, Any]] = {
    "tiny_shakespeare": dict(eval_split="validation", text_keys=("text",), blocks=True),
    "lm1b": dict(eval_split="test", text_keys=("text",)),
    "wikipedia": dict(train_split="train[:99%]", eval_split="train[99%:]", text_keys=("text",)),
    "imdb_reviews": dict(eval_split="test", text_keys=("text",)),
    "glue/sst2": dict(text_keys=("sentence",)),
    "glue/cola": dict(text_keys=("sentence",)),
    "glue/mrpc": dict(text_keys=("sentence1", "sentence2")),
    "glue/rte": dict(text_keys=("sentence1", "sentence2")),
    "glue/wnli": dict(text_keys=("sentence1", "sentence2")),
    "glue/qqp": dict(text_keys=("question1", "question2")),
    "glue/qnli": dict(text_keys=("question", "sentence")),
    "glue/mnli": dict(text_keys=("premise", "hypothesis"), eval_split="validation_matched"),
    "conll2003": dict(tokens_key="tokens", label_key="ner"),
    "mnist": dict(eval_split="test", mean=(0.1307,), std=(0.3081,), flip=False),
    "cifar10": dict(eval_split="test", mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616)),
    "cifar100": dict(
        eval_split="test", mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762)
    ),
    "imagenet2012": dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, variable_size=True),
    "wmt": dict(eval_split="validation"),  # every wmt*_translate/xx-yy pair
    "squad": dict(text_keys=("question", "context")),  # squad/v1.1, squad/v2.0
}
# Builders defined in modules that `import tensorflow_datasets` only registers lazily.
_LEGACY_PACKAGES = ("text", "translate", "image_classification", "image", "structured")


class DataError(ValueError):
  """A dataset that cannot be read: unknown, missing, unprepared, or needing TensorFlow."""


def spec(name: str) -> dict[str, Any]:
  """The ``DATASETS`` entry for a catalog name ({} when it has none)."""
  base = name.split("/")[0].split(":")[0]
  if name in DATASETS:
    return DATASETS[name]
  if base in DATASETS:
    return DATASETS[base]
  return DATASETS["wmt"] if base.startswith("wmt") else {}


def resolve_split(cfg, split: str) -> str:
  """Logical "train"/"validation" -> the TFDS split string (config key, table, or default)."""
  entry = spec(cfg.tfds_name)
  if split == "train":
    return cfg.train_split or entry.get("train_split", "train")
  if split == "validation":
    return cfg.eval_split or entry.get("eval_split", "validation")
  return split


def _prepare_hint(name: str, data_dir: str) -> str:
  return (
      f"prepare it in the array_record format, e.g. `tfds build {name} --data_dir={data_dir} "
      "--file_format=array_record` on a machine with TensorFlow and network (then copy the "
      "folder here), or set download=True (needs network; most builders need TensorFlow to "
      "prepare)"
  )


def builder(cfg):
  """The TFDS builder of ``cfg.tfds_name`` (errors name what is missing and how to get it)."""
  import tensorflow_datasets as tfds

  name = cfg.tfds_name
  if not name:
    raise DataError("source='tfds' needs tfds_name (a TFDS catalog name such as 'mnist').")
  if cfg.data_dir is not None and not pathlib.Path(cfg.data_dir).expanduser().is_dir():
    raise DataError(
        f"data_dir {cfg.data_dir!r} does not exist. Point data_dir at the folder holding "
        f"prepared TFDS datasets (<data_dir>/{name.split('/')[0]}/...), or "
        f"{_prepare_hint(name, cfg.data_dir)}."
    )
  data_dir = None if cfg.data_dir is None else str(pathlib.Path(cfg.data_dir).expanduser())
  try:
    return tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    pass
  for pkg in _LEGACY_PACKAGES:
    try:
      __import__(f"tensorflow_datasets.{pkg}")  # registers the package's builders
    except ImportError:
      pass
  try:
    return tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    known = tfds.list_builders(with_community_datasets=False)
    hint = registry.did_you_mean(name.split("/")[0], known, listing=False)
    raise DataError(
        f"unknown TFDS dataset {name!r}.{hint} See https://www.tensorflow.org/datasets/catalog."
    ) from None


def data_source(cfg, split: str):
  """``(random-access split, builder.info)`` for the TFDS dataset named in ``cfg``."""
  b = builder(cfg)
  name, manual = cfg.tfds_name, b.MANUAL_DOWNLOAD_INSTRUCTIONS
  root = str(b.data_dir_root)
  manual_dir = pathlib.Path(cfg.manual_dir or pathlib.Path(root) / "downloads" / "manual")
  if cfg.download and not b.is_prepared():
    if manual and not manual_dir.is_dir():
      raise DataError(
          f"{name} needs a manual download into {manual_dir} (set manual_dir to change it):\n"
          f"{manual.strip()}"
      )
    from tensorflow_datasets.core.download import DownloadConfig

    try:
      b.download_and_prepare(
          file_format="array_record", download_config=DownloadConfig(manual_dir=str(manual_dir))
      )
    except ImportError as e:
      if "tensorflow" in str(e).lower():
        raise DataError(
            f"preparing {name} needs TensorFlow, which is not installed (reading a prepared "
            f"dataset does not). Run `pip install tensorflow` and retry, or "
            f"{_prepare_hint(name, root)}."
        ) from e
      raise
  try:
    return b.as_data_source(split=resolve_split(cfg, split)), b.info
  except Exception as e:  # diagnosed below; anything else about a prepared dataset re-raises
    if b.is_prepared():
      if isinstance(e, NotImplementedError):
        raise DataError(
            f"{name} is prepared at {b.data_dir} but not as array_record files, which reading "
            f"without TensorFlow needs; {_prepare_hint(name, root)}."
        ) from e
      raise
    if manual:
      raise DataError(
          f"{name} is not prepared in {b.data_dir}. It needs a manual download: put the files "
          f"in {manual_dir}, then {_prepare_hint(name, root)}. Instructions:\n{manual.strip()}"
      ) from e
    raise DataError(f"{name} is not prepared in {b.data_dir}; {_prepare_hint(name, root)}.") from e


# ----------------------------------------------------------------------------------------------
# Feature mapping.


def _text(x) -> str:
  if isinstance(x, bytes):
    return x.decode("utf-8", errors="replace")
  if hasattr(x, "item"):
    return _text(x.item())
  return str(x)


def _text_keys(cfg, info) -> tuple[str, ...]:
  if cfg.get("text_keys"):
    return tuple(cfg.text_keys)
  keys = spec(cfg.tfds_name).get("text_keys")
  if keys:
    return keys
  import tensorflow_datasets as tfds

  keys = tuple(
      k for k, f in info.features.items()
      if isinstance(f, tfds.features.Text) and k not in ("id", "idx", "file_name")
  )
  if not keys:
    raise DataError(f"{cfg.tfds_name} has no text feature; its features: {list(info.features)}.")
  return keys


def _check_keys(cfg, info, keys) -> None:
  missing = [k for k in keys if k not in info.features]
  if missing:
    raise DataError(
        f"{cfg.tfds_name} has no feature {missing}; its features: {list(info.features)}."
    )


def documents(cfg, split: str):
  """Text documents (lm, mlm_nsp): the first text field of each record."""
  src, info = data_source(cfg, split)
  key = _text_keys(cfg, info)[0]
  _check_keys(cfg, info, [key])
  docs = LazySeq(len(src), lambda i: _text(src[i][key]))
  if spec(cfg.tfds_name).get("blocks"):  # a few huge records (tiny_shakespeare): cut them up
    docs = [b for d in docs for b in text_blocks(d)]
  return docs


def translation_pairs(cfg, split: str):
  src, info = data_source(cfg, split)
  langs = list(info.features.keys())
  s = cfg.source_lang
  t = cfg.target_lang or next((x for x in langs if x != s), None)
  if s not in langs or t not in langs or s == t:
    raise DataError(
        f"{cfg.tfds_name} has languages {langs}; set source_lang and target_lang to two of them "
        f"(got {s!r} -> {t!r})."
    )
  return LazySeq(len(src), lambda i: (_text(src[i][s]), _text(src[i][t]))), (s, t)


def classification_records(cfg, split: str):
  src, info = data_source(cfg, split)
  keys, label = _text_keys(cfg, info), cfg.label_key
  _check_keys(cfg, info, [*keys, label])
  names = tuple(info.features[label].names)
  get = lambda i: (lambda ex: (tuple(_text(ex[k]) for k in keys), int(ex[label])))(src[i])
  return LazySeq(len(src), get), names


def tagging_records(cfg, split: str):
  src, info = data_source(cfg, split)
  tokens_key = (cfg.text_keys or [spec(cfg.tfds_name).get("tokens_key", "tokens")])[0]
  label = cfg.label_key or spec(cfg.tfds_name).get("label_key", "label")
  _check_keys(cfg, info, [tokens_key, label])
  names = tuple(info.features[label].feature.names)

  def get(i):
    ex = src[i]
    words, tags = [_text(w) for w in ex[tokens_key]], [int(t) for t in ex[label]]
    n = min(len(words), len(tags))  # equal in real data; mock data draws them independently
    return words[:n], tags[:n]

  return LazySeq(len(src), get), names


def image_records(cfg, split: str):
  src, info = data_source(cfg, split)
  _check_keys(cfg, info, ["image", "label"])
  names = tuple(info.features["label"].names)
  return LazySeq(len(src), lambda i: (lambda ex: (ex["image"], int(ex["label"])))(src[i])), names


def squad_records(cfg, split: str):
  """Extractive QA examples of ``squad/v1.1``, ``squad/v2.0`` or any dataset with SQuAD's
  features (``id``, ``question``, ``context``, ``answers`` {``text``, ``answer_start``}).

  Returns:
    A random-access sequence of :class:`zoo.data.qa.QAExample`; SQuAD 2.0's unanswerable
    questions (``is_impossible``, empty ``answers``) have ``answers == ()``.
  """
  from zoo.data.qa import QAExample  # noqa: PLC0415 - the QA module only for QA data

  src, info = data_source(cfg, split)
  _check_keys(cfg, info, ["id", "question", "context", "answers"])

  def get(i):
    ex = src[i]
    texts, starts = ex["answers"]["text"], ex["answers"]["answer_start"]
    n = min(len(texts), len(starts))  # equal in real data; mock data draws them independently
    answers = () if bool(ex.get("is_impossible", False)) else tuple(
        (_text(texts[k]), int(starts[k])) for k in range(n)
    )
    return QAExample(_text(ex["id"]), _text(ex["question"]), _text(ex["context"]), answers)

  return LazySeq(len(src), get)
