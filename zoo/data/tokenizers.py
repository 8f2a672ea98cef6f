"""Tokenizers behind one small interface, and training a vocabulary on a corpus.

Every tokenizer has ``encode(str) -> list[int]`` (no special tokens added: the task pipelines
add [CLS]/[SEP]/BOS/EOS themselves), ``decode(ids) -> str`` (special tokens dropped),
``vocab_size`` and the special ids ``pad_id``, ``bos_id``, ``eos_id``, ``cls_id``, ``sep_id``,
``mask_id``, ``unk_id`` (None where a vocabulary has no such token).

Kinds (the ``tokenizer`` key of a data config):
  ``"byte"``: UTF-8 bytes, no vocabulary file. Layout (vocab_size 264): 0 [PAD], 1 [BOS],
    2 [EOS], 3 [CLS], 4 [SEP], 5 [MASK], 6 [UNK] (never produced), 7 reserved; byte ``b`` is
    id ``b + 8``.
  ``"bpe"`` / ``"sentencepiece"``: a byte-level BPE (``tokenizers``) or a unigram SentencePiece
    model trained on the training split and cached on disk; ids 0 [PAD], 1 [BOS], 2 [EOS],
    3 [UNK] (BPE adds 4 [CLS], 5 [SEP], 6 [MASK]).
  a path: ``tokenizer.json`` (any Hugging Face tokenizer), ``vocab.txt`` (BERT WordPiece),
    ``*.model`` (SentencePiece), or a folder holding one of them. ``tokenizer.json`` and
    ``vocab.txt`` are read by :mod:`zoo.pretrained.tokenizer`, as for a checkpoint's tokenizer.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib
from collections.abc import Iterable, Sequence
from typing import Protocol

import numpy as np

BYTE_OFFSET = 8
TRAINED_SPECIALS = ("[PAD]", "[BOS]", "[EOS]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TRAINABLE = ("bpe", "sentencepiece")

# Token strings tried, in order, for each special role of a loaded vocabulary.
_SPECIAL_CANDIDATES = {
    "pad": ("[PAD]", "<pad>", "<|pad|>", "<PAD>"),
    "bos": ("[BOS]", "<s>", "<bos>", "<|startoftext|>", "[CLS]"),
    "eos": ("[EOS]", "</s>", "<eos>", "<|endoftext|>", "[SEP]"),
    "cls": ("[CLS]", "<cls>", "<s>"),
    "sep": ("[SEP]", "<sep>", "</s>"),
    "mask": ("[MASK]", "<mask>"),
    "unk": ("[UNK]", "<unk>", "<|unk|>"),
}


class Tokenizer(Protocol):
  """What the data pipelines need from a tokenizer."""

  vocab_size: int
  pad_id: int
  bos_id: int | None
  eos_id: int | None
  cls_id: int | None
  sep_id: int | None
  mask_id: int | None
  unk_id: int | None

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Iterable[int]) -> str: ...


def special_ids(tok: Tokenizer) -> set[int]:
  """The ids of a tokenizer's special tokens."""
  ids = (tok.pad_id, tok.bos_id, tok.eos_id, tok.cls_id, tok.sep_id, tok.mask_id, tok.unk_id)
  return {i for i in ids if i is not None} | set(getattr(tok, "extra_special_ids", ()))


def normal_ids(tok: Tokenizer) -> np.ndarray:
  """Ids of ordinary (non-special) tokens: the pool MLM draws random replacements from."""
  keep = np.ones(tok.vocab_size, bool)
  keep[sorted(i for i in special_ids(tok) if i < tok.vocab_size)] = False
  return np.flatnonzero(keep).astype(np.int32)


def sentinel_ids(tok: Tokenizer) -> tuple[int, ...]:
  """The ids of ``<extra_id_0>``, ``<extra_id_1>``, ... (T5's sentinels), in that order.

  A tokenizer's own non-empty ``sentinel_ids`` attribute (a T5 tokenizer's) is used when it
  has one; else the strings are looked up in the vocabulary until one is missing. Empty when
  there are none (the byte tokenizer, vocabularies trained without them).
  """
  for obj in (tok, getattr(tok, "_tok", None)):  # HFTokenizer wraps a pretrained tokenizer
    own = getattr(obj, "sentinel_ids", None)
    if own:
      return tuple(int(i) for i in own)
  if isinstance(tok, HFTokenizer):
    lookup = tok._tok.backend.token_to_id
  elif isinstance(tok, SentencePieceTokenizer):
    sp = tok._sp
    lookup = lambda piece: (i if (i := sp.piece_to_id(piece)) != sp.unk_id() else None)
  else:
    return ()
  out: list[int] = []
  while (i := lookup(f"<extra_id_{len(out)}>")) is not None:
    out.append(int(i))
  return tuple(out)


class ByteTokenizer:
  """UTF-8 bytes shifted by 8 special ids (see the module docstring for the layout)."""

  vocab_size = 256 + BYTE_OFFSET
  pad_id, bos_id, eos_id, cls_id, sep_id, mask_id, unk_id = range(7)
  extra_special_ids = (7,)
  name = "byte"

  def encode(self, text: str) -> list[int]:
    return [b + BYTE_OFFSET for b in text.encode("utf-8")]

  def decode(self, ids: Iterable[int]) -> str:
    data = bytes(int(i) - BYTE_OFFSET for i in ids if BYTE_OFFSET <= int(i) < self.vocab_size)
    return data.decode("utf-8", errors="replace")


class HFTokenizer:
  """A ``tokenizer.json``, ``vocab.txt`` or trained BPE, read by :mod:`zoo.pretrained.tokenizer`.

  Args:
    tok: the :class:`zoo.pretrained.tokenizer.Tokenizer` read from the file.
    name: the file, for messages.
  """

  def __init__(self, tok, name: str):
    self._tok = tok
    self.name = name
    backend = tok.backend
    self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
    ids = {role: _first_id(backend.token_to_id, c) for role, c in _SPECIAL_CANDIDATES.items()}
    self.bos_id, self.eos_id = ids["bos"], ids["eos"]
    self.cls_id, self.sep_id = ids["cls"], ids["sep"]
    self.mask_id, self.unk_id = ids["mask"], ids["unk"]
    # Vocabularies without a pad token (GPT-2) pad with EOS: padded positions carry weight 0.
    pad = ids["pad"] if ids["pad"] is not None else self.eos_id
    self.pad_id = 0 if pad is None else pad
    self.extra_special_ids = tuple(
        i for i, t in backend.get_added_tokens_decoder().items() if t.special
    )

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False)

  def decode(self, ids: Iterable[int]) -> str:
    return self._tok.decode(ids, skip_special_tokens=True)


class SentencePieceTokenizer:
  """A SentencePiece ``.model`` (unigram or BPE)."""

  def __init__(self, model_proto: bytes, name: str):
    import sentencepiece as spm

    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.name = name
    sp = self._sp
    self.vocab_size = sp.get_piece_size()
    opt = lambda i: None if i < 0 else int(i)
    self.unk_id, self.bos_id, self.eos_id = opt(sp.unk_id()), opt(sp.bos_id()), opt(sp.eos_id())
    pad = opt(sp.pad_id())
    self.pad_id = pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)
    lookup = lambda piece: (i if (i := sp.piece_to_id(piece)) != sp.unk_id() else None)
    self.cls_id = _first_id(lookup, _SPECIAL_CANDIDATES["cls"]) or self.bos_id
    self.sep_id = _first_id(lookup, _SPECIAL_CANDIDATES["sep"]) or self.eos_id
    self.mask_id = _first_id(lookup, _SPECIAL_CANDIDATES["mask"])

  def encode(self, text: str) -> list[int]:
    return self._sp.encode(text)

  def decode(self, ids: Iterable[int]) -> str:
    keep = [int(i) for i in ids if int(i) not in special_ids(self) or int(i) == self.unk_id]
    return self._sp.decode(keep)


def _first_id(lookup, candidates: Sequence[str]) -> int | None:
  for c in candidates:
    i = lookup(c)
    if i is not None:
      return int(i)
  return None


def encode_with_offsets(tok: Tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
  """Token ids of ``text`` (as ``tok.encode``) and each token's character span in ``text``.

  Extractive QA maps a gold answer's characters to tokens, and a predicted token span back to
  text, through these spans: ``text[start:end]`` is the text the token came from.

  Args:
    tok: a ``"byte"`` tokenizer (each byte gets the span of the character it belongs to, so
      the 2-4 bytes of one multi-byte character share it) or a ``tokenizer.json`` /
      ``vocab.txt`` / trained BPE tokenizer (the ``tokenizers`` library's ``Encoding.offsets``,
      with surrounding whitespace trimmed: a byte-level BPE token " word" spans "word").
    text: the text to encode.

  Returns:
    ``(ids, offsets)``: ``ids == tok.encode(text)`` and ``offsets[i] = (start, end)``
    character indices into ``text``.

  Raises:
    ValueError: the tokenizer cannot say where its tokens come from (SentencePiece, or a
      tokenizer this module does not know).
  """
  if isinstance(tok, ByteTokenizer):
    ids, offsets = [], []
    for i, ch in enumerate(text):
      data = ch.encode("utf-8")
      ids += [b + BYTE_OFFSET for b in data]
      offsets += [(i, i + 1)] * len(data)
    return ids, offsets
  backend = getattr(getattr(tok, "_tok", None), "backend", None)
  if isinstance(tok, HFTokenizer) and hasattr(backend, "encode"):
    enc = backend.encode(text, add_special_tokens=False)
    return list(enc.ids), [_trim_span(text, s, e) for s, e in enc.offsets]
  kind = "SentencePiece" if isinstance(tok, SentencePieceTokenizer) else type(tok).__name__
  raise ValueError(
      f"tokenizer {getattr(tok, 'name', tok)!r} ({kind}) gives no character offsets, which "
      "extractive question answering needs to map answers to tokens; use a tokenizer.json or "
      "vocab.txt tokenizer (e.g. the pretrained checkpoint's folder), tokenizer='bpe' or "
      "tokenizer='byte'."
  )


def _trim_span(text: str, start: int, end: int) -> tuple[int, int]:
  """``(start, end)`` without the whitespace at either end (empty spans stay at ``start``)."""
  while start < end and text[start].isspace():
    start += 1
  while end > start and text[end - 1].isspace():
    end -= 1
  return start, end


# ----------------------------------------------------------------------------------------------
# Loading from files.


def tokenizer_file(folder: str | os.PathLike) -> pathlib.Path | None:
  """The tokenizer file a folder holds, in order of preference, or None."""
  p = pathlib.Path(folder).expanduser()
  if not p.is_dir():
    return None
  found = [p / n for n in ("tokenizer.json", "vocab.txt") if (p / n).is_file()]
  found += sorted(p.glob("*.model"))
  return found[0] if found else None


def tokenizer_from_file(path: str | os.PathLike) -> Tokenizer:
  """A tokenizer from ``tokenizer.json``, ``vocab.txt``, a SentencePiece ``.model`` or a folder.

  The files are read by :mod:`zoo.pretrained.tokenizer` (the one reader: special tokens,
  padding and truncation cleared); this wraps the result in the data pipelines' interface.

  Raises:
    ValueError: the path does not exist or holds no tokenizer file this module can read.
  """
  p = pathlib.Path(path).expanduser()
  if p.is_dir():
    found = tokenizer_file(p)
    if found is None:
      raise ValueError(
          f"tokenizer folder {str(p)!r} holds no tokenizer.json, vocab.txt or *.model file."
      )
    p = found
  if not p.is_file():
    raise ValueError(
        f"tokenizer file {str(p)!r} does not exist: give a tokenizer.json, vocab.txt or "
        "SentencePiece .model path, or tokenizer='byte' (no file needed)."
    )
  # Imported here: zoo.pretrained loads the model families, which byte-level data never needs.
  from zoo.pretrained import tokenizer as pretrained_tokenizer

  if p.suffix == ".json":
    return HFTokenizer(pretrained_tokenizer.read_tokenizer_json(p), name=str(p))
  if p.suffix == ".txt":
    # A bare vocab.txt has no tokenizer_config.json to say whether it is cased: read it off
    # the vocabulary (bert-base-cased has capitals, uncased vocabularies have none).
    config = {"do_lower_case": not _vocab_is_cased(p)}
    return HFTokenizer(pretrained_tokenizer.read_vocab_txt(p, config), name=str(p))
  if p.suffix == ".model":
    return SentencePieceTokenizer(p.read_bytes(), name=str(p))
  raise ValueError(
      f"cannot tell the tokenizer type of {str(p)!r}: expected tokenizer.json, vocab.txt "
      "(WordPiece) or a SentencePiece .model file."
  )


def _vocab_is_cased(path: pathlib.Path) -> bool:
  """Whether a ``vocab.txt`` has capitals outside its ``[SPECIAL]`` tokens."""
  words = path.read_text(encoding="utf-8").splitlines()
  return any(w.lower() != w for w in words if not (w.startswith("[") and w.endswith("]")))


# ----------------------------------------------------------------------------------------------
# Training a vocabulary.


def train_tokenizer(
    kind: str,
    texts: Iterable[str],
    *,
    vocab_size: int,
    cache_dir: str | os.PathLike | None = None,
    cache_key: str = "",
    extra_specials: Sequence[str] = (),
) -> Tokenizer:
  """Trains (or loads from ``cache_dir``) a small ``"bpe"`` or ``"sentencepiece"`` vocabulary.

  Args:
    kind: ``"bpe"`` (byte-level BPE, ``tokenizers``) or ``"sentencepiece"`` (unigram).
    texts: the training corpus (only read when nothing is cached).
    vocab_size: the target size; a small corpus may give fewer tokens.
    cache_dir: where trained files are kept (default ``$ZOO_CACHE`` or ``~/.cache/zoo``,
      subfolder ``tokenizers``); delete a file there to retrain.
    cache_key: identifies the corpus (dataset, split, languages...) in the file name.
    extra_specials: more special tokens, in order after the usual ones (span corruption's
      ``<extra_id_N>`` sentinels): BPE special tokens, SentencePiece user-defined symbols.
      Part of the cache key when given.

  Returns:
    The tokenizer, ids 0 [PAD], 1 [BOS], 2 [EOS], 3 [UNK] (BPE also 4 [CLS], 5 [SEP], 6 [MASK]),
    then ``extra_specials``.
  """
  if kind not in TRAINABLE:
    raise ValueError(f"can only train {TRAINABLE} vocabularies; got {kind!r}.")
  if vocab_size < 300:
    raise ValueError(
        f"vocab_size={vocab_size} is too small to train a {kind} vocabulary: use >= 300."
    )
  root = pathlib.Path(cache_dir or os.environ.get("ZOO_CACHE", "~/.cache/zoo")).expanduser()
  root = root / "tokenizers" if cache_dir is None else root
  extras = tuple(extra_specials)
  key = f"{kind}|{vocab_size}|{cache_key}" + (f"|{extras}" if extras else "")
  digest = hashlib.sha1(key.encode()).hexdigest()[:12]
  path = root / f"{kind}-{vocab_size}-{digest}{'.json' if kind == 'bpe' else '.model'}"
  if not path.is_file():
    texts = [t for t in texts if t.strip()]
    if not texts:
      raise ValueError(f"cannot train a {kind} vocabulary on an empty corpus ({cache_key}).")
    root.mkdir(parents=True, exist_ok=True)
    train = _train_bpe if kind == "bpe" else _train_spm
    data = train(texts, vocab_size, extras)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # atomic: concurrent processes never read half a file
  return tokenizer_from_file(path)


def _train_bpe(texts: list[str], vocab_size: int, extras: tuple[str, ...]) -> bytes:
  from tokenizers import Tokenizer as _HF
  from tokenizers import decoders, models, pre_tokenizers, trainers

  tok = _HF(models.BPE(unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size,
      special_tokens=[*TRAINED_SPECIALS, *extras],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte: nothing is ever [UNK]
      show_progress=False,
  )
  tok.train_from_iterator(texts, trainer=trainer)
  return tok.to_str().encode()


def _train_spm(texts: list[str], vocab_size: int, extras: tuple[str, ...]) -> bytes:
  import sentencepiece as spm

  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts),
      model_writer=model,
      vocab_size=vocab_size,
      model_type="unigram",
      pad_id=0,
      bos_id=1,
      eos_id=2,
      unk_id=3,
      **({"user_defined_symbols": list(extras)} if extras else {}),
      character_coverage=1.0,
      hard_vocab_limit=False,  # a small corpus may not support vocab_size pieces
      minloglevel=2,
  )
  return model.getvalue()
