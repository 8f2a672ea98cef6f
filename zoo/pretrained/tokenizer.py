"""The tokenizer that ships next to a checkpoint, without transformers.

``load_tokenizer(folder)`` looks, in order, for Marian's ``source.spm`` + ``target.spm`` +
``vocab.json``, ``tokenizer.json`` (any fast tokenizer), T5's ``spiece.model``, BERT's
``vocab.txt`` and GPT-2's ``vocab.json`` + ``merges.txt`` (a folder with none is an error,
unless ``required=False``), and wraps what it finds in one small interface:
``encode(text) -> list[int]``, ``decode(ids) -> str`` and ``__call__(texts)`` -> padded
numpy batches (``input_ids``, ``attention_mask``, ``token_type_ids``) that zoo models take.
T5's sentinels ``<extra_id_N>`` are ``Tokenizer.sentinel_ids[N]`` (empty for tokenizers
without them).

:func:`read_tokenizer_json` and :func:`read_vocab_txt` read one file of either kind; the data
pipelines (:func:`zoo.data.tokenizers.load_tokenizer`) read those files through them too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from zoo.pretrained.checkpoint_io import read_json, read_json_object


def _token(value: Any) -> str | None:
  """A special token from tokenizer_config / special_tokens_map (string or AddedToken dict)."""
  if isinstance(value, dict):
    return value.get("content")
  return value


class Tokenizer:
  """Text <-> token ids for a pretrained checkpoint.

  Attributes:
    pad_id: id used to pad batches (0 when the vocabulary names no pad token).
    vocab_size: size of the id space.
    kind: which files it was built from (``"tokenizer.json"``, ``"marian"``, ...).
    sentinel_ids: ``sentinel_ids[N]`` is the id of T5's ``<extra_id_N>``; empty without them.
  """

  def __init__(
      self, backend, *, kind: str, pad_id: int, vocab_size: int, spm=None,
      sentinel_ids: Sequence[int] = (),
  ):
    self.backend, self.kind, self.pad_id, self.vocab_size = backend, kind, pad_id, vocab_size
    self.sentinel_ids = tuple(int(i) for i in sentinel_ids)
    self._spm = spm  # a SentencePiece reader that encodes and decodes itself (Marian, T5)

  def encode(
      self, text: str, *, add_special_tokens: bool = True, target: bool = False
  ) -> list[int]:
    """Token ids of ``text`` (with [CLS]/[SEP] or </s> when the tokenizer adds them).

    ``target=True`` encodes with a Marian model's target-language SentencePiece model.
    """
    if self._spm is not None:
      return self._spm.encode(text, add_special_tokens, target)
    return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

  def _encode_with_types(self, text: str, pair: str | None) -> tuple[list[int], list[int]]:
    if self._spm is not None:
      if pair is not None and not isinstance(self._spm, _T5Spm):
        raise ValueError("a Marian tokenizer encodes single sentences; got text pairs.")
      ids = self.encode(text) + (self.encode(pair) if pair is not None else [])
      return ids, [0] * len(ids)  # T5 pairs: "A </s> B </s>", one segment type
    enc = self.backend.encode(text, pair)
    return list(enc.ids), list(enc.type_ids)

  def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
    """Text of ``ids`` (special tokens dropped by default)."""
    ids = [int(i) for i in ids]
    if self._spm is not None:
      return self._spm.decode(ids, skip_special_tokens)
    return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

  def __call__(
      self,
      texts: str | Sequence[str],
      pairs: str | Sequence[str] | None = None,
      *,
      max_length: int | None = None,
  ) -> dict:
    """Right-padded ``[B, L]`` int32 batches of ``texts``, truncated to ``max_length``.

    Args:
      texts: one string or a list.
      pairs: second segments (BERT sentence pairs: token type 1), same count as ``texts``.
      max_length: cut rows to this many tokens.

    Returns:
      ``{"input_ids", "attention_mask", "token_type_ids"}`` numpy arrays; attention_mask is 1
      for real tokens.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    pairs = (
        [None] * len(texts) if pairs is None else [pairs] if isinstance(pairs, str) else list(pairs)
    )
    if len(pairs) != len(texts):
      raise ValueError(f"got {len(texts)} texts but {len(pairs)} pairs.")
    rows = [self._encode_with_types(t, p) for t, p in zip(texts, pairs)]
    if max_length is not None:
      rows = [(ids[:max_length], types[:max_length]) for ids, types in rows]
    length = max((len(ids) for ids, _ in rows), default=0)
    out = {
        "input_ids": np.full((len(rows), length), self.pad_id, np.int32),
        "attention_mask": np.zeros((len(rows), length), np.int32),
        "token_type_ids": np.zeros((len(rows), length), np.int32),
    }
    for b, (ids, types) in enumerate(rows):
      out["input_ids"][b, : len(ids)] = ids
      out["attention_mask"][b, : len(ids)] = 1
      out["token_type_ids"][b, : len(ids)] = types
    return out

  def __repr__(self):
    return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, pad_id={self.pad_id})"


class _Marian:
  """Marian / Opus-MT: SentencePiece pieces looked up in a shared ``vocab.json``, then ``</s>``.

  This is what ``transformers.MarianTokenizer`` does: the source model splits source text,
  the target model splits target text and joins decoded pieces.
  """

  def __init__(self, folder: str, config: dict[str, Any]):
    import sentencepiece as spm

    self.source = spm.SentencePieceProcessor(model_file=os.path.join(folder, "source.spm"))
    self.target = spm.SentencePieceProcessor(model_file=os.path.join(folder, "target.spm"))
    self.vocab: dict[str, int] = read_json(os.path.join(folder, "vocab.json"))
    self.pieces = {i: p for p, i in self.vocab.items()}
    self.unk = self.vocab[_token(config.get("unk_token")) or "<unk>"]
    self.eos = self.vocab[_token(config.get("eos_token")) or "</s>"]
    self.pad = self.vocab[_token(config.get("pad_token")) or "<pad>"]
    self.special = {self.unk, self.eos, self.pad}

  def encode(self, text: str, add_special_tokens: bool, target: bool) -> list[int]:
    sp = self.target if target else self.source
    ids = [self.vocab.get(p, self.unk) for p in sp.encode(text, out_type=str)]
    return ids + [self.eos] if add_special_tokens else ids

  def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
    pieces = [
        self.pieces.get(i, "<unk>") for i in ids if not (skip_special_tokens and i in self.special)
    ]
    return self.target.decode_pieces(pieces)


class _T5Spm:
  """T5 / mT5's ``spiece.model``: the SentencePiece ids, ``</s>`` appended, and ``extra_ids``
  sentinels after the pieces, ``<extra_id_0>`` last (``transformers.T5Tokenizer``'s layout).

  Special tokens in the text (``<extra_id_3>``, ``</s>``, ``<pad>``, ``<unk>``) are their ids;
  the text between them is encoded piece by piece, as transformers' added tokens split it.
  """

  def __init__(self, path: str, config: dict[str, Any]):
    import sentencepiece as spm

    self.sp = spm.SentencePieceProcessor(model_file=path)
    size, extra = self.sp.get_piece_size(), int(config.get("extra_ids", 100))
    own = lambda piece: (i if (i := self.sp.piece_to_id(piece)) != self.sp.unk_id() else None)  # noqa: E731
    self.sentinels = (
        tuple(size + extra - 1 - n for n in range(extra)) if extra else _sentinels(own)
    )
    self.vocab_size = size + extra
    names = {"pad": "<pad>", "eos": "</s>", "unk": "<unk>"}
    ids = {k: self.sp.piece_to_id(_token(config.get(f"{k}_token")) or v) for k, v in names.items()}
    self.pad, self.eos, self.unk = ids["pad"], ids["eos"], ids["unk"]
    self.special = {
        **{self.sp.id_to_piece(i): i for i in ids.values()},
        **{f"<extra_id_{n}>": i for n, i in enumerate(self.sentinels)},
    }
    self.names = {i: p for p, i in self.special.items()}
    self.split = re.compile(
        "(" + "|".join(map(re.escape, sorted(self.special, key=len, reverse=True))) + ")"
    )

  def encode(self, text: str, add_special_tokens: bool, target: bool = False) -> list[int]:
    ids: list[int] = []
    for part in self.split.split(text):
      if part in self.special:
        ids.append(self.special[part])
      elif part:
        ids += self.sp.encode(part)
    return ids + [self.eos] if add_special_tokens else ids

  def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
    pieces = [
        self.names[i] if i in self.names else self.sp.id_to_piece(i)
        for i in ids if not (skip_special_tokens and i in self.names)
    ]
    text = "".join(pieces).replace("\u2581", " ")
    # The word-start mark of the first piece is no space (transformers' Metaspace decoder).
    return text[1:] if pieces and pieces[0].startswith("\u2581") else text


# The files of each tokenizer kind, in the order load_tokenizer looks for them.
_MARIAN = ("source.spm", "target.spm", "vocab.json")
_FAST = ("tokenizer.json",)
_T5 = ("spiece.model",)
_WORDPIECE = ("vocab.txt",)
_BPE = ("vocab.json", "merges.txt")
LOOKED_FOR = (_MARIAN, _FAST, _T5, _WORDPIECE, _BPE)


def load_tokenizer(path: str | os.PathLike, *, required: bool = True) -> Tokenizer | None:
  """The tokenizer saved with a checkpoint folder.

  Args:
    path: a Hugging Face model folder (or a file in it: the folder is searched).
    required: a folder with no tokenizer files is a ValueError naming the files looked for;
      False returns None for it (for callers that can work with token ids alone).

  Returns:
    A :class:`Tokenizer`, or None (only with ``required=False``) if the folder holds none.
  """
  folder = os.fspath(path)
  if os.path.isfile(folder):
    folder = os.path.dirname(folder) or "."  # a weights file: look next to it
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{folder} is not a folder.")
  config = {
      **read_json_object(os.path.join(folder, "special_tokens_map.json"), missing_ok=True),
      **read_json_object(os.path.join(folder, "tokenizer_config.json"), missing_ok=True),
  }
  has = lambda *names: all(os.path.exists(os.path.join(folder, n)) for n in names)  # noqa: E731

  if has(*_MARIAN):
    marian = _Marian(folder, config)
    return Tokenizer(
        None, kind="marian", pad_id=marian.pad, vocab_size=len(marian.vocab), spm=marian
    )
  if has(*_FAST):
    return read_tokenizer_json(os.path.join(folder, "tokenizer.json"), config)
  if has(*_T5):
    t5 = _T5Spm(os.path.join(folder, _T5[0]), config)
    return Tokenizer(None, kind="spiece.model", pad_id=t5.pad, vocab_size=t5.vocab_size, spm=t5,
                     sentinel_ids=t5.sentinels)
  if has(*_WORDPIECE):
    return read_vocab_txt(os.path.join(folder, "vocab.txt"), config)
  if has(*_BPE):
    import tokenizers

    backend = tokenizers.ByteLevelBPETokenizer(
        os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    )
    return _wrap(backend, "bpe", _token(config.get("pad_token")))
  if not required:
    return None
  raise ValueError(
      f"{folder} holds no tokenizer: zoo looked for {' or '.join(map(' + '.join, LOOKED_FOR))}. "
      "Copy the tokenizer files of the checkpoint into it (transformers' "
      "tokenizer.save_pretrained(folder) writes them), or pass required=False to get None "
      "and work with token ids."
  )


def read_tokenizer_json(path: str | os.PathLike, config: dict[str, Any] | None = None) -> Tokenizer:
  """One ``tokenizer.json`` file (any fast tokenizer, any file name).

  Args:
    path: the file.
    config: ``tokenizer_config.json`` / ``special_tokens_map.json`` contents; their
      ``pad_token`` wins over the one the file's padding settings name.

  Returns:
    A :class:`Tokenizer` whose ``encode`` never pads or truncates.
  """
  import tokenizers

  backend = tokenizers.Tokenizer.from_file(os.fspath(path))
  pad = _token((config or {}).get("pad_token"))
  if backend.padding:
    pad = pad or backend.padding.get("pad_token")
  # Fixed-length padding / truncation saved in the file (all-MiniLM-L6-v2 pads to 128) would
  # apply to every encode(); callers pad batches themselves, to their longest row.
  backend.no_padding()
  backend.no_truncation()
  return _wrap(backend, "tokenizer.json", pad)


def read_vocab_txt(path: str | os.PathLike, config: dict[str, Any] | None = None) -> Tokenizer:
  """BERT's WordPiece from one ``vocab.txt``.

  Args:
    path: the file.
    config: ``tokenizer_config.json`` contents: ``do_lower_case`` (default True, as in
      ``transformers.BertTokenizer``), ``strip_accents`` (default: follow lower-casing),
      ``tokenize_chinese_chars`` and ``pad_token`` (default ``[PAD]``).
  """
  import tokenizers

  config = config or {}
  backend = tokenizers.BertWordPieceTokenizer(
      os.fspath(path),
      lowercase=config.get("do_lower_case", True),
      strip_accents=config.get("strip_accents"),
      handle_chinese_chars=config.get("tokenize_chinese_chars", True),
  )
  return _wrap(backend, "vocab.txt", _token(config.get("pad_token")) or "[PAD]")


# Pad tokens looked up when no config names one: RoBERTa / XLM-R / BART's, then BERT's.
PAD_TOKENS = ("<pad>", "[PAD]")


def _wrap(backend, kind: str, pad: str | None) -> Tokenizer:
  """A :class:`Tokenizer` over a ``tokenizers`` backend; without ``pad``, the first of
  :data:`PAD_TOKENS` the vocabulary has, else id 0."""
  pad_id = backend.token_to_id(pad) if pad else None
  for name in () if pad else PAD_TOKENS:
    pad_id = backend.token_to_id(name) if pad_id is None else pad_id
  return Tokenizer(
      backend,
      kind=kind,
      pad_id=0 if pad_id is None else pad_id,
      vocab_size=backend.get_vocab_size(),
      sentinel_ids=_sentinels(backend.token_to_id),
  )


def _sentinels(lookup: Callable[[str], int | None]) -> tuple[int, ...]:
  """The ids of ``<extra_id_0>``, ``<extra_id_1>``, ... until one is missing."""
  out: list[int] = []
  while (i := lookup(f"<extra_id_{len(out)}>")) is not None:
    out.append(int(i))
  return tuple(out)


def sentinel_ids(tok: Tokenizer) -> tuple[int, ...]:
  """``sentinel_ids(tok)[N]`` is the id of T5's ``<extra_id_N>`` (empty without sentinels)."""
  return tok.sentinel_ids
