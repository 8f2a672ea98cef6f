"""BERT-style inputs: MLM + NSP pretraining, sequence classification and token tagging.

Every example is ``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]`` with ``token_type_ids`` 0 on
the first part and 1 on B, right-padded to ``seq_len`` (``attention_mask`` 1 on real tokens).
Pairs longer than ``seq_len - 3`` are trimmed one token at a time from the longer part (A from
its start, B from its end, so the text around the A|B boundary survives).

MLM (Devlin et al. 2019): ``mask_rate`` (15%) of the non-special tokens are selected; of those
80% become [MASK], 10% a random ordinary token, 10% stay; ``mlm_targets`` holds the original
id there and ``IGNORE_INDEX`` elsewhere. The same selection, gathered: ``masked_positions``
``[P]`` (ascending, then 0), ``masked_labels`` ``[P]`` (the original ids, then ``IGNORE_INDEX``)
and ``masked_weights`` ``[P]`` (1.0, then 0.0), with a static ``P`` (:func:`max_predictions`),
so the MLM head scores ``P`` positions instead of ``seq_len``.

NSP: with probability ``nsp_random_rate`` (50%) B is taken from another random document
(``nsp_labels`` 1, "not next"), else it is the text that follows A (label 0, "is next": the
rest of the document after a random sentence boundary, or the next record for one-sentence
documents).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zoo.data.batch import IGNORE_INDEX
from zoo.data.iteration import Dataset, example_dataset, pad_to
from zoo.data.offline import sentences
from zoo.data.tokenizers import normal_ids


def _cls_sep(tok) -> tuple[int, int]:
  cls = tok.cls_id if tok.cls_id is not None else tok.bos_id
  sep = tok.sep_id if tok.sep_id is not None else tok.eos_id
  if cls is None or sep is None:
    raise ValueError(
        f"tokenizer {getattr(tok, 'name', tok)!r} has no [CLS]/[SEP] (or BOS/EOS) token; use "
        "tokenizer='byte' or a BERT vocab.txt / tokenizer.json."
    )
  return cls, sep


def truncate_pair(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
  """Trim the longer of ``a`` (from its start) and ``b`` (from its end) until they fit."""
  a, b = list(a), list(b)
  while len(a) + len(b) > budget:
    if len(a) >= len(b):
      a.pop(0)
    else:
      b.pop()
  return a, b


def encode_pair(tok, a: list[int], b: list[int] | None, seq_len: int):
  """``(input_ids, token_type_ids, attention_mask)`` of ``[CLS] a [SEP] (b [SEP])``, padded."""
  cls, sep = _cls_sep(tok)
  if b is None:
    a, b_ = a[: seq_len - 2], []
    ids, types = [cls, *a, sep], [0] * (len(a) + 2)
  else:
    a, b_ = truncate_pair(a, b, seq_len - 3)
    ids = [cls, *a, sep, *b_, sep]
    types = [0] * (len(a) + 2) + [1] * (len(b_) + 1)
  n = len(ids)
  return (
      pad_to(ids, seq_len, tok.pad_id),
      pad_to(types, seq_len, 0),
      (np.arange(seq_len) < n).astype(np.int32),
  )


def mask_tokens(ids: np.ndarray, candidates: np.ndarray, tok, rng, *, mask_rate: float,
                mask_token_rate: float, random_token_rate: float, pool: np.ndarray):
  """BERT masking of ``ids[candidates]``: returns ``(masked ids, mlm_targets)``."""
  ids = ids.copy()
  targets = np.full_like(ids, IGNORE_INDEX)
  if len(candidates) == 0 or mask_rate <= 0:
    return ids, targets
  n = max(1, int(round(mask_rate * len(candidates))))  # BERT: at least one prediction
  chosen = rng.choice(candidates, size=n, replace=False)
  targets[chosen] = ids[chosen]
  u = rng.random(n)
  to_mask = chosen[u < mask_token_rate]
  to_random = chosen[(u >= mask_token_rate) & (u < mask_token_rate + random_token_rate)]
  ids[to_mask] = tok.mask_id
  ids[to_random] = rng.choice(pool, size=len(to_random))
  return ids, targets


def most_selected(seq_len: int, mask_rate: float) -> int:
  """The most tokens :func:`mask_tokens` selects in a ``seq_len`` row of :func:`build_mlm_nsp`.

  A row has at most ``seq_len - 3`` candidates ([CLS] A [SEP] B [SEP]), and the count
  ``max(1, round(mask_rate * n))`` never decreases with ``n``.
  """
  n = max(seq_len - 3, 0)
  if n == 0 or mask_rate <= 0:
    return 0
  return max(1, int(round(mask_rate * n)))


def max_predictions(cfg) -> int:
  """``P``, the static number of masked-LM slots per row: the data key ``max_predictions``, or
  by default :func:`most_selected` rounded up to a multiple of 8 (24 at ``seq_len`` 128, 80 at
  512: BERT's ``max_predictions_per_seq`` is 20 and 80), so no selected token is ever dropped.

  Raises:
    ValueError: ``max_predictions`` is set below what the selection can produce.
  """
  need = most_selected(cfg.seq_len, cfg.mask_rate)
  p = cfg.get("max_predictions")
  if p is None:
    return max(8, -(-need // 8) * 8)
  if p < need:
    raise ValueError(
        f"max_predictions={p} is too small: with seq_len={cfg.seq_len} and mask_rate="
        f"{cfg.mask_rate} up to {need} tokens of a row are selected, and none may be dropped. "
        f"Set max_predictions >= {need}, or leave it None for the default."
    )
  return int(p)


def gather_targets(targets: np.ndarray, slots: int) -> dict[str, np.ndarray]:
  """``mlm_targets`` ``[L]`` -> ``masked_positions``, ``masked_labels``, ``masked_weights``
  ``[slots]``: the selected positions in ascending order, their ids, 1.0; then padding."""
  where = np.flatnonzero(targets != IGNORE_INDEX)
  if len(where) > slots:
    raise ValueError(f"{len(where)} tokens selected for {slots} max_predictions slots.")
  n = len(where)
  positions = np.zeros(slots, np.int32)
  labels = np.full(slots, IGNORE_INDEX, np.int32)
  weights = np.zeros(slots, np.float32)
  positions[:n], labels[:n], weights[:n] = where, targets[where], 1.0
  return {"masked_positions": positions, "masked_labels": labels, "masked_weights": weights}


def build_mlm_nsp(docs: Sequence[str], tok, *, cfg, **kwargs) -> Dataset:
  """MLM + NSP examples; record ``i`` supplies segment A (see the module docstring)."""
  if tok.mask_id is None:
    raise ValueError(
        f"tokenizer {getattr(tok, 'name', tok)!r} has no [MASK] token, which MLM needs; use "
        "tokenizer='byte' or a BERT vocab.txt."
    )
  cls, sep = _cls_sep(tok)
  seq_len, n_docs, pool = cfg.seq_len, len(docs), normal_ids(tok)
  if n_docs < 2:
    raise ValueError("NSP needs at least two documents to draw random partners from.")
  rates = dict(mask_rate=cfg.mask_rate, mask_token_rate=cfg.mask_token_rate,
               random_token_rate=cfg.random_token_rate)
  slots = max_predictions(cfg)

  def make(record, rng):
    sents = sentences(docs[record]) or [docs[record]]
    if len(sents) >= 2:
      k = int(rng.integers(1, len(sents)))
      a, b = sents[:k], sents[k:]
    else:
      a, b = sents, sentences(docs[(record + 1) % n_docs]) or [docs[(record + 1) % n_docs]]
    is_random = rng.random() < cfg.nsp_random_rate
    if is_random:
      other = int(rng.integers(n_docs - 1))
      other += other >= record
      other_sents = sentences(docs[other]) or [docs[other]]
      b = other_sents[int(rng.integers(len(other_sents))):]
    ids, types, attn = encode_pair(tok, tok.encode(" ".join(a)), tok.encode(" ".join(b)), seq_len)
    real = attn.astype(bool) & (ids != cls) & (ids != sep)
    masked, targets = mask_tokens(ids, np.flatnonzero(real), tok, rng, pool=pool, **rates)
    return {
        "input_ids": masked,
        "token_type_ids": types,
        "attention_mask": attn,
        "mlm_targets": targets.astype(np.int32),
        **gather_targets(targets, slots),
        "nsp_labels": np.int32(is_random),
    }

  def empty():
    return {
        "input_ids": np.full(seq_len, tok.pad_id, np.int32),
        "token_type_ids": np.zeros(seq_len, np.int32),
        "attention_mask": np.zeros(seq_len, np.int32),
        "mlm_targets": np.full(seq_len, IGNORE_INDEX, np.int32),
        **gather_targets(np.full(seq_len, IGNORE_INDEX, np.int32), slots),
        "nsp_labels": np.int32(IGNORE_INDEX),
    }

  return example_dataset(make_example=make, empty_example=empty, **kwargs)


def build_classification(records: Sequence, tok, *, seq_len: int, **kwargs) -> Dataset:
  """``records[i] = ((text,) or (text_a, text_b), label)`` -> classification rows."""

  def make(record, rng):
    texts, label = records[record]
    parts = [tok.encode(t) for t in texts]
    ids, types, attn = encode_pair(tok, parts[0], parts[1] if len(parts) > 1 else None, seq_len)
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": attn,
            "labels": np.int32(label)}

  def empty():
    z = np.zeros(seq_len, np.int32)
    return {"input_ids": np.full(seq_len, tok.pad_id, np.int32), "token_type_ids": z,
            "attention_mask": z, "labels": np.int32(IGNORE_INDEX)}

  return example_dataset(make_example=make, empty_example=empty, **kwargs)


def build_tagging(records: Sequence, tok, *, seq_len: int, **kwargs) -> Dataset:
  """``records[i] = (words, tags)`` -> one label per word on its first token.

  Later sub-tokens of a word, [CLS], [SEP] and padding get ``IGNORE_INDEX``; words that do not
  fit in ``seq_len - 2`` tokens are dropped from the end.
  """
  cls, sep = _cls_sep(tok)

  def make(record, rng):
    words, tags = records[record]
    ids, labels = [cls], [IGNORE_INDEX]
    for word, tag in zip(words, tags):
      pieces = tok.encode(word)
      if not pieces:
        continue
      if len(ids) + len(pieces) > seq_len - 1:
        break
      ids += pieces
      labels += [tag] + [IGNORE_INDEX] * (len(pieces) - 1)
    ids.append(sep)
    labels.append(IGNORE_INDEX)
    return {
        "input_ids": pad_to(ids, seq_len, tok.pad_id),
        "attention_mask": (np.arange(seq_len) < len(ids)).astype(np.int32),
        "labels": pad_to(labels, seq_len, IGNORE_INDEX),
    }

  def empty():
    return {"input_ids": np.full(seq_len, tok.pad_id, np.int32),
            "attention_mask": np.zeros(seq_len, np.int32),
            "labels": np.full(seq_len, IGNORE_INDEX, np.int32)}

  return example_dataset(make_example=make, empty_example=empty, **kwargs)
