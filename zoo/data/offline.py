"""Offline datasets: real data already on the machine, no network, no manual download.

* lm: the Python standard library's own ``.py`` files (or the text files under ``path``), cut
  into blocks at blank lines followed by an unindented line (top-level definitions; paragraphs
  of prose), small blocks merged up to 256 characters.
* translation: English -> French number names from ``num2words``: record ``i`` is
  (``num2words(i, lang="en")``, ``num2words(i, lang="fr")``) for ``i < max_number``, e.g.
  "eighty-one" -> "quatre-vingt-un" (or the tab-separated pairs of the file at ``path``).
* mlm_nsp: the standard library's docstrings (each a document of sentences).
* classification: docstring topic: which standard-library package a class/function docstring
  comes from (asyncio, email, http, importlib, logging, multiprocessing, unittest, urllib,
  xml); or, with ``path``, one class per sub-folder, one example per text block.
* tagging: word segmentation: docstring sentences with the spaces removed, one tag per
  character, B/M/E/S = begins / middle of / ends a word, single-character word.
* image_classification: scikit-learn's bundled 8x8 handwritten digits (1797 images, 10
  classes; the file ships in the wheel), or ``images``/``labels`` arrays of an ``.npz`` file.

Splits are deterministic: a record goes to "validation" when the CRC32 of its text (or pixels,
or number) falls in the lowest ``offline_eval_fraction`` of the hash range, else to "train".
"""

from __future__ import annotations

import functools
import os
import pathlib
import re
import sys
import sysconfig
import zlib
from collections.abc import Callable, Sequence

import numpy as np

TOPIC_PACKAGES = (
    "asyncio", "email", "http", "importlib", "logging", "multiprocessing", "unittest", "urllib",
    "xml",
)
SEGMENT_TAGS = ("B", "M", "E", "S")
DIGIT_NAMES = tuple(str(d) for d in range(10))
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_BLOCK_BREAK = re.compile(r"\n[ \t]*\n(?=\S)")
_DOCSTRING = re.compile(
    r"^[ \t]*(?:async[ \t]+)?(?:def|class)[ \t][^\n]*:[ \t]*\n[ \t]*[rRuU]?(\"\"\"|''')(.*?)\1",
    re.S | re.M,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
_WORD = re.compile(r"[A-Za-z0-9_]+|[^\sA-Za-z0-9_]")


class LazySeq(Sequence):
  """A random-access sequence whose items are computed on demand."""

  def __init__(self, length: int, get: Callable[[int], object]):
    self._length, self._get = length, get

  def __len__(self):
    return self._length

  def __getitem__(self, i):
    if not -self._length <= i < self._length:
      raise IndexError(i)
    return self._get(i % self._length)


def in_split(key: bytes, split: str, eval_fraction: float) -> bool:
  """Whether a record with this hash key belongs to ``split`` ("train" or "validation")."""
  is_eval = zlib.crc32(key) < eval_fraction * 2**32
  return is_eval if split == "validation" else not is_eval


def check_split(split: str) -> None:
  if split not in ("train", "validation"):
    raise ValueError(f"offline datasets have splits 'train' and 'validation'; got {split!r}.")


# ----------------------------------------------------------------------------------------------
# Text on disk.


def stdlib_dir() -> pathlib.Path:
  return pathlib.Path(sysconfig.get_paths()["stdlib"])


@functools.lru_cache(maxsize=4)
def read_texts(path: str | None) -> tuple[tuple[str, str], ...]:
  """``(relative path, text)`` of the stdlib ``.py`` files (``path=None``) or of ``path``.

  ``path`` may be a file or a folder (every UTF-8 file under it; binary files are skipped).
  Sorted by relative path, so the corpus is the same on every run.
  """
  if path is None:
    root, pattern = stdlib_dir(), ".py"
  else:
    root, pattern = pathlib.Path(path).expanduser(), ""
    if not root.exists():
      raise ValueError(
          f"data path {str(root)!r} does not exist: point `path` at a text file or folder."
      )
  files = [root] if root.is_file() else []
  if root.is_dir():
    for d, sub, names in os.walk(root):
      sub[:] = sorted(s for s in sub if s not in _SKIP_DIRS and not s.startswith("."))
      files += [pathlib.Path(d, n) for n in names if n.endswith(pattern) and not n.startswith(".")]
  out = []
  for f in sorted(files):
    try:
      text = f.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
      continue
    if text.strip():
      rel = f.name if f == root else f.relative_to(root).as_posix()
      out.append((rel, text))
  if not out:
    where = f"under {str(root)!r}" if path is not None else f"in the standard library at {root}"
    raise ValueError(f"empty corpus: found no non-empty UTF-8 text files {where}.")
  return tuple(out)


def text_blocks(text: str, min_chars: int = 256) -> list[str]:
  """Cuts at blank lines followed by an unindented line; merges blocks below ``min_chars``."""
  out, cur = [], ""
  for part in _BLOCK_BREAK.split(text):
    cur = f"{cur}\n\n{part}" if cur else part
    if len(cur) >= min_chars:
      out.append(cur.strip("\n"))
      cur = ""
  if cur.strip():
    out.append(cur.strip("\n"))
  return out


def sentences(text: str) -> list[str]:
  """Whitespace-normalised sentences of a prose text."""
  text = " ".join(text.split())
  return [s for s in _SENTENCE_END.split(text) if s]


@functools.lru_cache(maxsize=1)
def stdlib_docstrings() -> tuple[tuple[str, str], ...]:
  """``(top-level package or "", docstring)`` of every stdlib class and function."""
  out = []
  for rel, text in read_texts(None):
    package = rel.split("/")[0] if "/" in rel else ""
    for m in _DOCSTRING.finditer(text):
      doc = m.group(2).strip()
      if len(doc) >= 20:
        out.append((package, doc))
  return tuple(out)


# ----------------------------------------------------------------------------------------------
# The per-task offline records.


def _split(items: list, key: Callable[[object], bytes], split: str, fraction: float) -> list:
  out = [x for x in items if in_split(key(x), split, fraction)]
  if not out:
    raise ValueError(
        f"empty corpus: the offline {split!r} split has no records (of {len(items)}); use a "
        "bigger corpus or change offline_eval_fraction."
    )
  return out


def lm_documents(path: str | None, split: str, fraction: float) -> list[str]:
  blocks = [b for _, text in read_texts(path) for b in text_blocks(text)]
  return _split(blocks, lambda b: b.encode(), split, fraction)


def mlm_documents(path: str | None, split: str, fraction: float) -> list[str]:
  if path is None:
    docs = [d for _, d in stdlib_docstrings()]
  else:
    docs = [b for _, text in read_texts(path) for b in text_blocks(text, min_chars=0)]
  docs = list(dict.fromkeys(d for d in docs if sentences(d)))
  return _split(docs, lambda d: d.encode(), split, fraction)


def classification_records(path: str | None, split: str, fraction: float):
  """``([(texts, label)], label_names)``."""
  if path is None:
    names = TOPIC_PACKAGES
    pairs = {d: names.index(p) for p, d in stdlib_docstrings() if p in names}
  else:
    root = pathlib.Path(path).expanduser()
    names = tuple(sorted(d.name for d in root.iterdir() if d.is_dir())) if root.is_dir() else ()
    if len(names) < 2:
      raise ValueError(
          f"classification `path` {str(root)!r} needs one sub-folder of text files per class "
          f"(at least two); found {list(names)}."
      )
    pairs = {}
    for label, name in enumerate(names):
      for _, text in read_texts(str(root / name)):
        pairs.update({b: label for b in text_blocks(text, min_chars=0)})
  items = [((" ".join(t.split()),), y) for t, y in pairs.items()]
  return _split(items, lambda x: x[0][0].encode(), split, fraction), names


def segmentation_example(sentence: str) -> tuple[list[str], list[int]]:
  """Characters of ``sentence`` without spaces and their B/M/E/S word-boundary tags."""
  chars, tags = [], []
  for word in _WORD.findall(sentence):
    chars += list(word)
    if len(word) == 1:
      tags.append(3)
    else:
      tags += [0] + [1] * (len(word) - 2) + [2]
  return chars, tags


def tagging_records(path: str | None, split: str, fraction: float):
  if path is None:
    texts = [d for _, d in stdlib_docstrings()]
  else:
    texts = [b for _, t in read_texts(path) for b in text_blocks(t, min_chars=0)]
  sents = list(dict.fromkeys(
      s for t in texts for s in sentences(t) if s.isascii() and len(_WORD.findall(s)) >= 3
  ))
  sents = _split(sents, lambda s: s.encode(), split, fraction)
  return LazySeq(len(sents), lambda i: segmentation_example(sents[i])), SEGMENT_TAGS


def number_pairs(max_number: int, source_lang: str, target_lang: str, split: str, fraction: float):
  """Number names ``(source_lang, target_lang)`` for the numbers of ``split`` below max."""
  from num2words import CONVERTER_CLASSES

  for lang in (source_lang, target_lang):
    if lang not in CONVERTER_CLASSES:
      raise ValueError(
          f"num2words has no language {lang!r} for the offline translation task; "
          f"choose from {sorted(CONVERTER_CLASSES)}."
      )
  src, tgt = CONVERTER_CLASSES[source_lang], CONVERTER_CLASSES[target_lang]
  numbers = [n for n in range(max_number) if in_split(str(n).encode(), split, fraction)]
  if not numbers:
    raise ValueError(f"max_number={max_number} leaves the {split!r} split empty; raise it.")
  return LazySeq(len(numbers), lambda i: (src.to_cardinal(numbers[i]), tgt.to_cardinal(numbers[i])))


def tsv_pairs(path: str, split: str, fraction: float):
  pairs = []
  for _, text in read_texts(path):
    for line in text.splitlines():
      cols = line.split("\t")
      if len(cols) >= 2 and cols[0].strip() and cols[1].strip():
        pairs.append((cols[0].strip(), cols[1].strip()))
  if not pairs:
    raise ValueError(
        f"empty corpus: no 'source<TAB>target' lines in {path!r} (translation `path` expects "
        "tab-separated sentence pairs)."
    )
  return _split(pairs, lambda p: "\t".join(p).encode(), split, fraction)


@functools.lru_cache(maxsize=1)
def sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's digits (``load_digits``): uint8 images ``[1797, 8, 8, 1]``, labels ``[1797]``.

  Read straight from the ``digits.csv.gz`` the wheel ships (importing sklearn takes seconds).
  Pixel values are 0..16 counts of set bits in 4x4 blocks; they are stretched to 0..255.
  """
  relative = pathlib.Path("sklearn", "datasets", "data", "digits.csv.gz")
  path = next(
      (pathlib.Path(p, relative) for p in sys.path if pathlib.Path(p, relative).is_file()), None
  )
  if path is None:
    raise ValueError("the offline image dataset needs scikit-learn: `pip install scikit-learn`.")
  data = np.loadtxt(path, delimiter=",")
  images = np.round(data[:, :-1].reshape(-1, 8, 8, 1) * (255 / 16)).astype(np.uint8)
  return images, data[:, -1].astype(np.int64)


def image_records(path: str | None, split: str, fraction: float):
  """``([(uint8 image [H, W, C], label)], label_names)``: sklearn digits or an ``.npz``."""
  if path is None:
    images, labels = sklearn_digits()
    names = DIGIT_NAMES
  else:
    with np.load(pathlib.Path(path).expanduser()) as f:
      if "images" not in f or "labels" not in f:
        raise ValueError(
            f"{path!r} must be an .npz with arrays 'images' and 'labels'; has {list(f)}."
        )
      images, labels = f["images"], f["labels"].astype(np.int64)
    if images.ndim == 3:
      images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) != len(labels):
      raise ValueError(
          f"images in {path!r} have shape {images.shape} and labels {labels.shape}: expected "
          "images [N, H, W] or [N, H, W, 1 or 3] and labels [N]."
      )
    names = tuple(str(i) for i in range(int(labels.max()) + 1))
  keep = [i for i in range(len(images)) if in_split(images[i].tobytes(), split, fraction)]
  if not keep:
    raise ValueError(f"the offline {split!r} image split is empty; change offline_eval_fraction.")
  return LazySeq(len(keep), lambda i: (images[keep[i]], int(labels[keep[i]]))), names
