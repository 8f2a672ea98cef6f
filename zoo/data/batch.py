"""The batch layout every task shares, free of Grain (the GPU image has none).

Batches are dicts of numpy arrays with the batch on axis 0. Labels and targets equal to
:data:`IGNORE_INDEX` do not count; :func:`pad_batch` pads a short final evaluation batch with
rows that count for nothing.
"""

from __future__ import annotations

import numpy as np

Batch = dict[str, np.ndarray]

IGNORE_INDEX = -100  # a label or target that does not count (padding, unselected MLM positions)


def pad_batch(batch: Batch, rows: int) -> Batch:
  """Pad a short (final evaluation) batch to ``rows`` rows that count for nothing.

  Labels and targets (keys ending in ``labels``, ``targets``, ``_out_ids``) are padded with
  :data:`IGNORE_INDEX`, weights and everything else with 0, so padded rows drop out of every
  padding-aware mean.
  """
  out = {}
  for key, x in batch.items():
    x = np.asarray(x)
    missing = rows - x.shape[0]
    if missing <= 0:
      out[key] = x
      continue
    ignore = key.endswith(("labels", "targets", "_out_ids"))
    fill = IGNORE_INDEX if ignore and np.issubdtype(x.dtype, np.integer) else 0
    pad = np.full((missing, *x.shape[1:]), fill, x.dtype)
    out[key] = np.concatenate([x, pad])
  return out
