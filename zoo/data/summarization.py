"""Summarization records: ``(document, summary)`` text pairs, and the lead baseline.

* Offline (no download): the Python standard library's PEP 257 docstrings of modules, classes
  and functions (``ast.get_docstring``). The summary is the docstring's first line (kept when a
  blank line follows it, it has 3-25 words and does not end in ``:`` or ``,``); the document is
  the body's leading prose paragraphs, up to the first that is no prose: a doctest (``>>>``), a
  section (``Args:``, ``Returns:``, ``Parameters`` + ``----``, ``Example:`` ...), mostly
  indented lines (code, literal blocks, nested parameter lists) or mostly field and list lines
  (``:param x:``, ``name -- text``, ``- item``); trailing paragraphs that end no sentence (they
  introduce or run on into what was cut) go too. So a document is one contiguous stretch of
  its docstring, each paragraph whitespace-normalised, paragraphs joined by newlines. A pair
  needs a document of at least 100 characters and 2 sentences that does not start with its
  summary; a pair an earlier module already gave is dropped. Splits are by module (the CRC32
  of its dotted name, :func:`zoo.data.offline.in_split`), so validation documents come from
  modules never trained on: 1,033 train / 224 validation pairs (293 modules) on CPython 3.11.
  ``path``: a file (or folder) of ``document<TAB>summary`` lines instead, split by document.
* TFDS by name: ``cnn_dailymail`` (``article`` -> ``highlights``), ``xsum`` (``document`` ->
  ``summary``), ``gigaword`` and ``multi_news`` (:data:`TFDS_DATASETS`); any dataset with two
  text features through the ``source_key`` / ``target_key`` data keys.
* Lead-n: the first ``n`` sentences of the document as its summary (``lead_sentences``; None
  = the dataset's usual count: Lead-3 on CNN/DailyMail and Multi-News, else Lead-1).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import re
from collections.abc import Sequence

from zoo.data import offline
from zoo.data.tfds_sources import DataError

MIN_DOCUMENT_CHARS = 100
MIN_DOCUMENT_SENTENCES = 2
SUMMARY_WORDS = (3, 25)

_SECTION = re.compile(
    r"^(args|arguments|parameters|params|returns?|yields?|raises|keyword arguments|attributes|"
    r"examples?|example usage|notes?|see also|usage|options|methods)\s*:?\s*$",
    re.I,
)
_FIELD = re.compile(r"^(:\w[^:]*:|\S+\s+--\s|[-*+]\s|\*?\w+\s*:\s)")
_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
_BLOCKS = ("body", "orelse", "finalbody", "handlers", "cases")


@dataclasses.dataclass(frozen=True)
class Known:
  """A TFDS summarization dataset's text features and its usual lead baseline."""

  source_key: str
  target_key: str
  lead_sentences: int = 1


TFDS_DATASETS = {
    "cnn_dailymail": Known("article", "highlights", 3),
    "xsum": Known("document", "summary", 1),
    "gigaword": Known("document", "summary", 1),
    "multi_news": Known("document", "summary", 3),
}


# ----------------------------------------------------------------------------------------------
# The lead baseline.


def lead(text: str, n: int = 1) -> str:
  """The first ``n`` sentences of ``text`` (``offline.sentences``), one per line."""
  check_lead_sentences(n)
  return "\n".join(offline.sentences(text)[:n])


def check_lead_sentences(n) -> None:
  if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
    raise ValueError(
        f"lead_sentences={n!r} is not a sentence count: give an integer >= 1 (3 for Lead-3 on "
        "CNN/DailyMail) or None for the dataset's usual count."
    )


def lead_count(cfg) -> int:
  """``lead_sentences``, or the dataset's usual count (Lead-3 on cnn_dailymail; else 1)."""
  if cfg.lead_sentences is not None:
    return int(cfg.lead_sentences)
  known = TFDS_DATASETS.get(_base_name(cfg.tfds_name)) if cfg.source == "tfds" else None
  return known.lead_sentences if known else 1


# ----------------------------------------------------------------------------------------------
# Offline: standard-library docstrings.


def module_name(rel: str) -> str:
  """``"json/decoder.py"`` -> ``"json.decoder"``; ``"json/__init__.py"`` -> ``"json"``."""
  parts = rel.removesuffix(".py").split("/")
  return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def _documented(node: ast.AST):
  """The modules, classes and functions at or under ``node``, in source order (statements
  only: no expression can hold a docstring)."""
  if isinstance(node, _DOCUMENTED):
    yield node
  for field in _BLOCKS:
    for child in getattr(node, field, None) or ():
      yield from _documented(child)


def _paragraphs(lines: list[str]) -> list[list[str]]:
  out, cur = [], []
  for line in [*lines, ""]:
    if line.strip():
      cur.append(line)
    elif cur:
      out.append(cur)
      cur = []
  return out


def _is_prose(para: list[str]) -> bool:
  """Whether a docstring paragraph is prose: no doctest, section, code or field list."""
  if any(line.lstrip().startswith(">>>") for line in para):
    return False
  if _SECTION.match(para[0].strip()) or (len(para) > 1 and set(para[1].strip()) <= {"-", "="}):
    return False
  indented = sum(line[:1].isspace() for line in para)
  fields = sum(bool(_FIELD.match(line.strip())) for line in para)
  return 2 * indented <= len(para) and 2 * fields <= len(para)


def docstring_pair(doc: str) -> tuple[str, str] | None:
  """``(document, summary)`` of a cleaned PEP 257 docstring, or None when it makes no pair."""
  lines = doc.split("\n")
  if len(lines) < 3 or lines[1].strip():
    return None
  summary = lines[0].strip()
  words = len(summary.split())
  if not SUMMARY_WORDS[0] <= words <= SUMMARY_WORDS[1] or summary.endswith((":", ",")):
    return None
  kept = []
  for para in _paragraphs(lines[2:]):
    if not _is_prose(para):
      break
    kept.append(" ".join(" ".join(para).split()))
  while kept and not kept[-1].rstrip("\"')]*").endswith((".", "!", "?")):
    kept.pop()  # it runs on into, or introduces, what was cut
  document = "\n".join(kept)
  if (len(document) < MIN_DOCUMENT_CHARS
      or len(offline.sentences(document)) < MIN_DOCUMENT_SENTENCES
      or " ".join(document.split()).lower().startswith(" ".join(summary.split()).lower())):
    return None
  return document, summary


def source_pairs(source: str) -> list[tuple[str, str]]:
  """The pairs of one Python file's docstrings, in source order ([] if it does not parse)."""
  try:
    tree = ast.parse(source)
  except SyntaxError:  # a file of another Python version's grammar
    return []
  docs = (ast.get_docstring(node) for node in _documented(tree))
  return [pair for pair in map(docstring_pair, filter(None, docs)) if pair is not None]


@functools.lru_cache(maxsize=1)
def stdlib_pairs() -> tuple[tuple[str, tuple[str, str]], ...]:
  """``(module, (document, summary))`` of every standard-library docstring that makes a pair,
  sorted by file path, then in source order; the first copy of a pair only."""
  seen, out = set(), []
  for rel, source in offline.read_texts(None):
    for pair in source_pairs(source):
      if pair not in seen:
        seen.add(pair)
        out.append((module_name(rel), pair))
  return tuple(out)


def offline_pairs(split: str, eval_fraction: float) -> list[tuple[str, str]]:
  """The standard-library pairs of ``split``, split by module."""
  offline.check_split(split)
  keyed = stdlib_pairs()
  out = [pair for module, pair in keyed if offline.in_split(module.encode(), split, eval_fraction)]
  if not out:
    raise ValueError(
        f"empty corpus: the offline summarization {split!r} split has no pairs (of "
        f"{len(keyed)} docstrings with a summary line and a body); change "
        "offline_eval_fraction or give a `path` of document<TAB>summary lines."
    )
  return out


def tsv_pairs(path: str, split: str, eval_fraction: float) -> list[tuple[str, str]]:
  """``document<TAB>summary`` lines of the file (or folder) ``path``, split by document."""
  offline.check_split(split)
  pairs = []
  for _, text in offline.read_texts(path):
    for line in text.splitlines():
      cols = [c.strip() for c in line.split("\t")]
      if len(cols) >= 2 and cols[0] and cols[1]:
        pairs.append((cols[0], cols[1]))
  out = [p for p in pairs if offline.in_split(p[0].encode(), split, eval_fraction)]
  if not out:
    raise ValueError(
        f"empty corpus: {path!r} gives the summarization {split!r} split no pairs (of "
        f"{len(pairs)} 'document<TAB>summary' lines); write one pair per line, or unset `path` "
        "for the standard-library docstrings."
    )
  return out


# ----------------------------------------------------------------------------------------------
# TFDS.


def _base_name(name: str) -> str:
  return name.split("/")[0].split(":")[0]


def resolve_keys(
    name: str,
    text_features: Sequence[str],
    source_key: str | None = None,
    target_key: str | None = None,
) -> tuple[str, str]:
  """``(source_key, target_key)``: the ones given, else the known dataset's.

  Args:
    name: the TFDS catalog name (``cnn_dailymail``, ``xsum/1.1.0``...).
    text_features: the dataset's text features.
    source_key: the document feature (None = the known dataset's).
    target_key: the summary feature (None = the known dataset's).

  Raises:
    DataError: an unknown dataset without both keys, a key that is no text feature, or the
      same feature twice; the message lists the text features.
  """
  known = TFDS_DATASETS.get(_base_name(name))
  src = source_key or (known.source_key if known else None)
  tgt = target_key or (known.target_key if known else None)
  texts = list(text_features)
  if src is None or tgt is None:
    raise DataError(
        f"{name} is not a known summarization dataset ({', '.join(TFDS_DATASETS)}): set "
        f"source_key (the document) and target_key (the summary) to two of its text features "
        f"{texts}."
    )
  for what, key in (("source_key", src), ("target_key", tgt)):
    if key not in texts:
      raise DataError(
          f"{what}={key!r} is no text feature of {name}; set it to one of its text features "
          f"{texts}."
      )
  if src == tgt:
    raise DataError(
        f"source_key and target_key are both {src!r}; the summary must be another text "
        f"feature of {name}: one of {texts}."
    )
  return src, tgt


def _text(x) -> str:
  if isinstance(x, bytes):
    return x.decode("utf-8", errors="replace")
  return _text(x.item()) if hasattr(x, "item") else str(x)


def record_pair(record, keys: tuple[str, str]) -> tuple[str, str]:
  """``(document, summary)`` text of one TFDS record (a dict of bytes / numpy values)."""
  return _text(record[keys[0]]), _text(record[keys[1]])


def tfds_pairs(cfg, split: str) -> tuple[Sequence[tuple[str, str]], tuple[str, str]]:
  """The pairs of a TFDS split and the ``(source_key, target_key)`` read."""
  import tensorflow_datasets as tfds
  import tensorflow_datasets.summarization  # noqa: F401 - registers cnn_dailymail, xsum ...

  from zoo.data import tfds_sources  # noqa: PLC0415

  src, info = tfds_sources.data_source(cfg, split)
  texts = [k for k, f in info.features.items() if isinstance(f, tfds.features.Text)]
  keys = resolve_keys(cfg.tfds_name, texts, cfg.source_key, cfg.target_key)
  return offline.LazySeq(len(src), lambda i: record_pair(src[i], keys)), keys
