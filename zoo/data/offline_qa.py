"""Offline extractive QA: questions about the Python standard library's own docstrings.

No download and no randomness: the text is the stdlib that ships with Python. For each module
(``json.decoder``, ``tkinter`` ...), every documented function or method with a public name
gives an entry ``name(): <paragraph>``: the first paragraph of its docstring, whitespace
normalised, its leading sentences up to ~300 characters (ASCII only; doctest paragraphs,
repeated names within a module and paragraphs already used by an earlier module are left out).
A module's entries, in source order, are cut into contexts of 3-5 entries (one line each).

Questions are templates over sentences of an entry whose answer is an exact span of it:

* ``returns``: an entry with a sentence "Return(s) <X>." asks "What does <name> return?"
  (when another entry of the context has one too, so that the context's first "Return" is
  not the answer by default); the answer is <X> up to its first ``,;:([`` or " -- ", at most
  8 words, without a trailing function word or an unclosed quote or bracket ("the frame of
  the caller or None").
* ``which``: the same <X> asks "Which function returns <X>?"; the answer is the name in the
  entry's header (only when <X> occurs once in the context).
* ``does``: an entry whose first sentence (at most 10 words) starts with a verb-like word
  ("Open a file and return a stream.") asks "What does <name> do?"; the answer is that sentence
  without its full stop.

Several functions share a context, so a model must find the function the question names (or
the one whose description matches). Splits are by module: a module is "validation" when the
CRC32 of its dotted name falls in the lowest ``eval_fraction`` of the hash range
(:func:`zoo.data.offline.in_split`), so held-out contexts come from modules never seen in
training.

With ``path``: SQuAD-format JSON (``{"data": [{"title", "paragraphs": [{"context", "qas":
[{"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}``, e.g.
``train-v1.1.json``), a file or every ``.json`` under a folder, split by article title.
"""

from __future__ import annotations

import functools
import json
import pathlib
import re

from zoo.data.offline import check_split, in_split, read_texts, sentences
from zoo.data.qa import QAExample

TEMPLATES = ("returns", "which", "does")
MAX_ANSWER_WORDS = 8
MAX_DOES_WORDS = 10
MAX_ENTRY_CHARS = 300
CONTEXT_ENTRIES = 4  # a module's entries are cut into contexts of about this many (3-5)

_DEF = re.compile(
    r"^[ \t]*(?:async[ \t]+)?def[ \t]+([A-Za-z]\w*)[ \t]*\([^\n]*:[ \t]*\n"
    r"[ \t]*[rRuU]?(\"\"\"|''')(.*?)\2",
    re.S | re.M,
)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
_RETURNS = re.compile(r"Returns? (?=\S)")
_CLAUSE_END = re.compile(r"[,;:(\\[]| --")
_TRAILING = {"a", "an", "the", "of", "to", "and", "or", "in", "for", "with", "by", "if", "as",
             "that", "is", "on", "from", "at", "when", "which", "are", "be", "it", "over", "most",
             "into", "about", "than", "between", "its", "their", "this", "any", "each", "some",
             "not", "no", "more", "has", "have", "was", "were", "been", "but", "where", "whose",
             "whether", "using", "via", "per", "so", "such", "all", "will", "can", "may"}
_NOT_A_VERB = {"a", "an", "the", "this", "these", "that", "used", "called", "internal",
               "helper", "deprecated", "like", "same", "note", "for", "in", "if", "when", "alias",
               "compatibility", "private", "undocumented", "see", "it", "as", "all", "each",
               "any", "no", "not", "only", "may", "should", "must", "can", "default"}


# ----------------------------------------------------------------------------------------------
# The standard library set.


def module_name(rel: str) -> str:
  """``"json/decoder.py"`` -> ``"json.decoder"``; ``"json/__init__.py"`` -> ``"json"``."""
  parts = rel.removesuffix(".py").split("/")
  return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def _entry_text(doc: str) -> str | None:
  """The leading sentences (<= ~300 characters) of a docstring's first paragraph."""
  para = " ".join(_PARAGRAPH_BREAK.split(doc.strip())[0].split())
  if len(para) < 20 or not para.isascii() or ">>>" in para:
    return None
  out = ""
  for s in sentences(para):
    if out and len(out) + 1 + len(s) > MAX_ENTRY_CHARS:
      break
    out = f"{out} {s}" if out else s
  return out


@functools.lru_cache(maxsize=1)
def stdlib_entries() -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
  """``(module, ((name, text), ...))`` for every stdlib module with documented functions.

  Sorted by file path; within a module, source order, first occurrence of each name; an
  entry text already used by an earlier module is dropped (copies never straddle the split).
  """
  seen, out = set(), []
  for rel, source in read_texts(None):
    names, entries = set(), []
    for m in _DEF.finditer(source):
      name, text = m.group(1), _entry_text(m.group(3))
      if text is None or name in names or text in seen:
        continue
      names.add(name)
      seen.add(text)
      entries.append((name, text))
    if entries:
      out.append((module_name(rel), tuple(entries)))
  return tuple(out)


def _chunks(entries: tuple, size: int = CONTEXT_ENTRIES) -> list[tuple]:
  """``entries`` cut into ``round(n / size)`` nearly equal runs (3-5 long for size 4)."""
  n = len(entries)
  if n < 3:
    return []
  k = max(1, round(n / size))
  bounds = [n * i // k for i in range(k + 1)]
  return [entries[a:b] for a, b in zip(bounds, bounds[1:])]


def _trim_answer(x: str) -> str:
  """``x`` up to its first clause break, at most ``MAX_ANSWER_WORDS`` words, no trailing
  function words or punctuation (always a prefix of ``x``)."""
  m = _CLAUSE_END.search(x)
  if m:
    x = x[: m.start()]
  words = x.split(" ")[:MAX_ANSWER_WORDS]
  while words:
    x = " ".join(words).rstrip(".,;:!?- ")
    if words[-1].lower().strip(".,;:!?") not in _TRAILING and not _unbalanced(x):
      return x if re.search(r"[A-Za-z0-9]", x) else ""
    words.pop()
  return ""


def _unbalanced(x: str) -> bool:
  """Whether ``x`` opens a quote or bracket it does not close (apostrophes do not count)."""
  quotes = re.sub(r"(?<=[A-Za-z])'(?=[A-Za-z])", "", x)
  return (x.count("(") != x.count(")") or x.count("[") != x.count("]")
          or x.count("{") != x.count("}") or any(quotes.count(q) % 2 for q in "'\"`"))


def _returns_span(text: str) -> tuple[int, int] | None:
  """Character span in ``text`` of <X> of its first sentence "Return(s) <X>."."""
  pos = 0
  for s in sentences(text):
    start = text.index(s, pos)
    pos = start + len(s)
    m = _RETURNS.match(s)
    if m:
      x = _trim_answer(s[m.end():])
      return (start + m.end(), start + m.end() + len(x)) if x else None
  return None


def _does_answer(text: str) -> str | None:
  """The first sentence (without its full stop) when it is short and starts like a verb."""
  first = sentences(text)[0]
  words = first.split(" ")
  lead = words[0]
  if (len(words) > MAX_DOES_WORDS or not lead.isalpha() or not lead[0].isupper()
      or lead.lower() in _NOT_A_VERB or lead.startswith("Return")):
    return None
  answer = first.rstrip(".")
  return answer if " " in answer and not _unbalanced(answer) else None


def context_examples(module: str, chunk: int, entries: tuple) -> list[QAExample]:
  """The questions about one context (the ``name(): text`` lines of ``entries``)."""
  lines, starts = [], []
  for name, text in entries:
    starts.append(sum(len(line) + 1 for line in lines))
    lines.append(f"{name}(): {text}")
  context = "\n".join(lines)
  spans = [_returns_span(text) for _, text in entries]
  # "What does f return?" only where another function's return is there to confuse it with.
  ask_returns = sum(span is not None for span in spans) >= 2
  out = []
  for (name, text), line_start, span in zip(entries, starts, spans):
    body = line_start + len(name) + 4  # after "name(): "
    ident = f"{module}:{chunk}:{name}"
    if span is not None:
      x = text[span[0] : span[1]]
      if ask_returns:
        out.append(QAExample(f"{ident}:returns", f"What does {name} return?", context,
                             ((x, body + span[0]),)))
      if context.count(x) == 1:
        out.append(QAExample(f"{ident}:which", f"Which function returns {x}?", context,
                             ((name, line_start),)))
    does = _does_answer(text)
    if does is not None:
      out.append(QAExample(f"{ident}:does", f"What does {name} do?", context, ((does, body),)))
  return out


@functools.lru_cache(maxsize=1)
def stdlib_examples() -> tuple[tuple[str, QAExample], ...]:
  """``(module, example)`` of the whole standard-library set, in a fixed order."""
  return tuple(
      (module, ex)
      for module, entries in stdlib_entries()
      for chunk, part in enumerate(_chunks(entries))
      for ex in context_examples(module, chunk, part)
  )


# ----------------------------------------------------------------------------------------------
# SQuAD-format JSON files.


def squad_json_examples(path: str) -> list[tuple[str, QAExample]]:
  """``(title, example)`` of the SQuAD-format ``.json`` file at ``path`` (or every one under
  it); SQuAD 2.0's ``is_impossible`` questions have no answers."""
  root = pathlib.Path(path).expanduser()
  files = sorted(root.rglob("*.json")) if root.is_dir() else [root]
  if not root.exists() or not files:
    raise ValueError(
        f"QA data path {str(root)!r} is not a SQuAD-format .json file or a folder of them "
        "(train-v1.1.json, dev-v2.0.json, ...); leave `path` unset for the standard-library "
        "set."
    )
  out = []
  for f in files:
    try:
      articles = json.loads(f.read_text(encoding="utf-8"))["data"]
      for article in articles:
        title = article.get("title", "")
        for para in article["paragraphs"]:
          for qa in para["qas"]:
            answers = () if qa.get("is_impossible") else tuple(
                (a["text"], int(a["answer_start"])) for a in qa["answers"]
            )
            out.append((title, QAExample(str(qa["id"]), qa["question"], para["context"],
                                         answers)))
    except (KeyError, TypeError, json.JSONDecodeError) as e:
      raise ValueError(
          f"{str(f)!r} is not SQuAD-format JSON ({type(e).__name__}: {e}); expected "
          '{"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question", '
          '"answers": [{"text", "answer_start"}]}]}]}]}.'
      ) from e
  return out


def records(path: str | None, split: str, eval_fraction: float) -> list[QAExample]:
  """The examples of ``split`` ("train" or "validation"): the standard-library set
  (``path=None``, split by module) or SQuAD-format JSON at ``path`` (split by title)."""
  check_split(split)
  keyed = stdlib_examples() if path is None else squad_json_examples(path)
  out = [ex for key, ex in keyed if in_split(key.encode(), split, eval_fraction)]
  if not out:
    raise ValueError(
        f"the offline QA {split!r} split is empty (of {len(keyed)} examples); use more data "
        "or change offline_eval_fraction."
    )
  return out
