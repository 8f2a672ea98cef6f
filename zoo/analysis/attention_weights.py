"""Every attention layer's weights of a zoo model, and which layers and heads to show.

The weights come from :class:`zoo.layers.attention.MultiHeadAttention`'s ``sow_weights``:
:func:`attention_weights` intercepts every attention call with ``sow_weights=True`` (which
forces the xla path, the one that forms the ``[B, N, T, S]`` weights) and applies the model
with ``mutable=["intermediates"]``, so no model code needs a new switch. What the model is fed
follows its family's declared inputs (``zoo.registry.Family.inputs``): token ids, images, or
source and target ids.

The views (:mod:`zoo.analysis.attention_maps` for text, :mod:`zoo.analysis.vit_attention`,
:mod:`zoo.analysis.seq2seq_attention`) import this module; it imports none of them.
"""

from __future__ import annotations

import inspect
import re

import numpy as np

from zoo import registry
from zoo.analysis import common

NO_WEIGHTS_IMPLS = ("cudnn", "chunked")  # never form the [B, N, T, S] weights


def _natural(key: str):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def collect(tree, prefix=()) -> list[tuple[str, np.ndarray]]:
  """``(path, weights)`` of every sown ``attention_weights``; scanned stacks are split."""
  out = []
  for key in sorted(tree, key=_natural):
    value, path = tree[key], (*prefix, key)
    if key == "attention_weights":
      w = np.asarray(value[0], np.float32)
      name = "/".join(prefix)
      if w.ndim == 5:  # nn.scan: a leading [L] axis
        out += [(name.replace("/layers/", f"/layers_{i}/"), w[i]) for i in range(w.shape[0])]
      else:
        out.append((name, w))
    elif hasattr(value, "keys"):
      out += collect(value, path)
  return out


def input_kind(model) -> registry.InputKind:
  """What ``model`` takes (its family's ``inputs``); an AnalysisError for a non-zoo model."""
  try:
    return registry.family_of(model).inputs
  except ValueError:
    models = " and ".join(f.model_cls.__name__ for f in registry.families())
    raise common.AnalysisError(
        f"attention maps support {models} checkpoints; got a {type(model).__name__}."
    ) from None


def attention_weights(
    model, params, inputs, attention_mask=None, token_type_ids=None, tgt_ids=None
) -> list[tuple[str, np.ndarray]]:
  """Every attention layer's weights, in module-path order.

  Args:
    model: a zoo model of any registered family.
    params: its parameters (with or without the ``"params"`` level).
    inputs: ``[B, L]`` token ids; ``[B, H, W, C]`` float images for a family of images; an
      encoder-decoder's ``[B, S]`` source ids (its pad id is padding).
    attention_mask: ``[B, L]``, True / 1 for real tokens (None = the model's default).
    token_type_ids: ``[B, L]`` segment ids (BERT), passed to models that take them.
    tgt_ids: ``[B, T]`` an encoder-decoder's decoder input ids (start token first).

  Returns:
    ``[(module path, [B, N, T, S] float32 weights), ...]``; for a Transformer the
    ``decoder/layers_i/attn`` (``[B, N, T, T]``), ``decoder/layers_i/cross_attn``
    (``[B, N, T, S]``) and ``encoder/layers_i/attn`` (``[B, N, S, S]``) layers.

  Raises:
    AnalysisError: for a non-zoo model, bad inputs, or when no attention weights came back.
  """
  from flax import linen as nn

  from zoo.layers.attention import MultiHeadAttention

  kind, name = input_kind(model), type(model).__name__

  def sow_all(next_fun, args, kwargs, context):
    if isinstance(context.module, MultiHeadAttention) and context.method_name == "__call__":
      kwargs = {**kwargs, "sow_weights": True}
    return next_fun(*args, **kwargs)

  args, kwargs = (np.asarray(inputs),), {}
  if kind == "images":
    args = (np.asarray(inputs, np.float32),)
  elif kind == "source_target":
    if tgt_ids is None:
      raise common.AnalysisError(
          f"a {name}'s attention needs tgt_ids, the decoder input (start token first)."
      )
    args = (np.asarray(inputs), np.asarray(tgt_ids))
  if attention_mask is not None:
    kwargs["attention_mask"] = np.asarray(attention_mask).astype(bool)
  takes = inspect.signature(model.__call__).parameters
  if token_type_ids is not None and "token_type_ids" in takes:  # BERT's segment ids
    kwargs["token_type_ids"] = np.asarray(token_type_ids)
  variables = {"params": params.get("params", params)}
  try:
    with nn.intercept_methods(sow_all):
      _, state = model.apply(variables, *args, mutable=["intermediates"], **kwargs)
  except ValueError as e:  # the family's input checks: wrong image size, ids out of range ...
    raise common.AnalysisError(str(e)) from e
  found = collect(state.get("intermediates", {}))
  if not found:
    raise common.AnalysisError(f"this {name} returned no attention weights.")
  return found


def select(
    num_layers: int, num_heads: int, layer: int | None, head: int | None, all_layers: bool,
    what: str = "attention layers",
) -> tuple[list[int], list[int]]:
  """The layer and head indices to show; an out-of-range ``layer`` / ``head`` is an error."""
  chosen = list(range(num_layers))
  if not all_layers:
    index = num_layers - 1 if layer is None else layer
    if not -num_layers <= index < num_layers:
      raise common.AnalysisError(
          f"--layer {layer} is out of range: the model has {num_layers} {what} "
          f"(0..{num_layers - 1}, or negative from the end)."
      )
    chosen = [index % num_layers]
  if head is not None and not 0 <= head < num_heads:
    raise common.AnalysisError(
        f"--head {head} is out of range: the model has {num_heads} heads (0..{num_heads - 1})."
    )
  return chosen, list(range(num_heads)) if head is None else [head]
