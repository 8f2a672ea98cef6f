"""Language-model batches: documents -> [BOS] tokens [EOS], packed into fixed-length rows.

Packed rows (``packing=True``): documents are laid end to end; each one becomes a segment
(``segment_ids`` 1, 2, ... within the row, 0 for padding) with ``positions`` restarting at 0,
so with a segment mask no token attends across documents. A document that does not fit the
rest of a row continues as a new segment at the start of the next row: no token is dropped
and rows are full except the last one of an eval pass. Packing runs on the global document
stream, before its rows are shared among processes, so global batch N holds the same rows on
any number of processes. Unpacked rows hold one document each, truncated to ``seq_len + 1``
tokens and right-padded (``weights`` 0 on padding).

Batch: ``input_ids``, ``targets``, ``weights`` ``[B, L]`` (int32, int32, float32), and when
packed ``positions``, ``segment_ids`` ``[B, L]`` int32.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zoo.data.iteration import (
  Dataset,
  Layout,
  PackedRows,
  empty_lm_row,
  example_dataset,
  row_dataset,
)


def document_tokens(doc: str, tok) -> np.ndarray:
  ids = tok.encode(doc)
  ends = (
      [tok.bos_id] if tok.bos_id is not None else [],
      [tok.eos_id] if tok.eos_id is not None else [],
  )
  return np.asarray(ends[0] + ids + ends[1], np.int32)


def build(
    docs: Sequence[str], tokenizer, *, seq_len: int, packing: bool, layout: Layout, **kwargs
) -> Dataset:
  pad = tokenizer.pad_id
  if packing:
    tokens = layout.records().map(lambda item: document_tokens(docs[item[1]], tokenizer))
    rows = PackedRows(layout.read(tokens), length=seq_len, pad_id=pad)
    return row_dataset(
        rows, empty_row=lambda: empty_lm_row(seq_len, pad, True), layout=layout, **kwargs
    )

  def make(record, rng):
    t = document_tokens(docs[record], tokenizer)[: seq_len + 1]
    n = len(t) - 1
    row = empty_lm_row(seq_len, pad, False)
    row["input_ids"][:n], row["targets"][:n], row["weights"][:n] = t[:-1], t[1:], 1.0
    return row

  return example_dataset(
      make_example=make, empty_example=lambda: empty_lm_row(seq_len, pad, False),
      layout=layout, **kwargs,
  )
