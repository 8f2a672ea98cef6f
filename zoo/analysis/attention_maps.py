"""Attention maps of a checkpoint of any family.

BERT: encoder self-attention; GPT: masked self-attention (both over the tokens of ``--text``);
ViT: self-attention over the patches (+ [CLS]) of an image, and attention rollout
(:mod:`zoo.analysis.vit_attention`); Transformer: encoder self-attention, decoder masked
self-attention and cross-attention (:mod:`zoo.analysis.seq2seq_attention`).

The weights come from :class:`zoo.layers.attention.MultiHeadAttention`'s ``sow_weights``:
:func:`attention_weights` intercepts every attention call with ``sow_weights=True`` (which
forces the xla path, the one that forms the ``[B, N, T, S]`` weights) and applies the model
with ``mutable=["intermediates"]``, so no model code needs a new switch.
"""

from __future__ import annotations

import re

import numpy as np

from zoo.analysis import common

DEFAULT_CHECKPOINT = "all-MiniLM-L6-v2"
DEFAULT_TEXT = "The cat sat on the mat because it was tired."
FAMILIES = ("Bert", "GPT", "ViT", "Transformer")
NO_WEIGHTS_IMPLS = ("cudnn", "chunked")  # never form the [B, N, T, S] weights


def _natural(key: str):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _collect(tree, prefix=()) -> list[tuple[str, np.ndarray]]:
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
      out += _collect(value, path)
  return out


def attention_weights(
    model, params, inputs, attention_mask=None, token_type_ids=None, tgt_ids=None
) -> list[tuple[str, np.ndarray]]:
  """Every attention layer's weights, in module-path order.

  Args:
    model: a zoo ``Bert``, ``GPT``, ``ViT`` or ``Transformer`` module.
    params: its parameters (with or without the ``"params"`` level).
    inputs: ``[B, L]`` token ids; a ViT's ``[B, H, W, C]`` float images; a Transformer's
      ``[B, S]`` source ids (``pad_id`` is padding).
    attention_mask: ``[B, L]``, True / 1 for real tokens (None = the model's default).
    token_type_ids: ``[B, L]`` BERT segment ids.
    tgt_ids: ``[B, T]`` a Transformer's decoder input ids (start token first).

  Returns:
    ``[(module path, [B, N, T, S] float32 weights), ...]``; for a Transformer the
    ``decoder/layers_i/attn`` (``[B, N, T, T]``), ``decoder/layers_i/cross_attn``
    (``[B, N, T, S]``) and ``encoder/layers_i/attn`` (``[B, N, S, S]``) layers.

  Raises:
    AnalysisError: for another family, bad inputs, or when no attention weights came back.
  """
  from flax import linen as nn

  from zoo.layers.attention import MultiHeadAttention

  family = type(model).__name__
  if family not in FAMILIES:
    raise common.AnalysisError(
        f"attention maps support {' and '.join(FAMILIES)} checkpoints; got a {family}."
    )

  def sow_all(next_fun, args, kwargs, context):
    if isinstance(context.module, MultiHeadAttention) and context.method_name == "__call__":
      kwargs = {**kwargs, "sow_weights": True}
    return next_fun(*args, **kwargs)

  args, kwargs = (np.asarray(inputs),), {}
  if family == "ViT":
    args = (np.asarray(inputs, np.float32),)
  elif family == "Transformer":
    if tgt_ids is None:
      raise common.AnalysisError(
          "a Transformer's attention needs tgt_ids, the decoder input (start token first)."
      )
    args = (np.asarray(inputs), np.asarray(tgt_ids))
  if attention_mask is not None:
    kwargs["attention_mask"] = np.asarray(attention_mask).astype(bool)
  if token_type_ids is not None and family == "Bert":
    kwargs["token_type_ids"] = np.asarray(token_type_ids)
  variables = {"params": params.get("params", params)}
  try:
    with nn.intercept_methods(sow_all):
      _, state = model.apply(variables, *args, mutable=["intermediates"], **kwargs)
  except ValueError as e:  # the family's input checks: wrong image size, ids out of range ...
    raise common.AnalysisError(str(e)) from e
  found = _collect(state.get("intermediates", {}))
  if not found:
    raise common.AnalysisError(f"this {family} returned no attention weights.")
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


def _labels(tokenizer, ids) -> list[str]:
  backend = getattr(tokenizer, "backend", None)
  if hasattr(backend, "id_to_token"):
    return [backend.id_to_token(int(i)) or str(i) for i in ids]
  return [tokenizer.decode([int(i)], skip_special_tokens=False) for i in ids]


def run(
    *,
    checkpoint: str = DEFAULT_CHECKPOINT,
    text: str = DEFAULT_TEXT,
    layer: int | None = None,
    head: int | None = None,
    all_layers: bool = False,
    attention_impl: str | None = None,
    image: str | None = None,
    image_index: int = 0,
    image_size: int | None = None,
    target: str | None = None,
) -> dict:
  """Load ``checkpoint``, run its input (text or image) and return the maps to plot.

  Args:
    checkpoint: a Hugging Face folder, zoo checkpoint, train.py workdir or short name.
    text: the input sentence (a Transformer's source).
    layer: layer to show (negative counts from the end); default the last.
    head: one head only; default all heads.
    all_layers: show every layer (rows) instead of one.
    attention_impl: an implementation requested for the run; only ``"xla"`` (or None) forms
      the weights.
    image: a ViT's input image file; default an offline digit (``image_index``).
    image_index: which validation digit.
    image_size: resize the image to this (a multiple of the patch size); default the model's.
    target: a Transformer's target text (teacher-forced); default its greedy translation.

  Returns:
    BERT / GPT: ``{"checkpoint", "family", "tokens", "layers": [{"layer", "name", "heads":
    {h: [L, L]}}], "num_layers", "num_heads"}``; ViT: see :func:`vit_attention.run`;
    Transformer: see :func:`seq2seq_attention.run`.
  """
  import zoo

  if attention_impl in NO_WEIGHTS_IMPLS:
    raise common.AnalysisError(
        f"attention_impl={attention_impl!r} never forms the [batch, heads, query, key] "
        "attention weights; use 'xla' (or leave it unset) to see attention maps."
    )
  try:
    model, params = zoo.from_pretrained(checkpoint)
  except (OSError, ValueError, KeyError) as e:
    raise common.AnalysisError(f"cannot read checkpoint {checkpoint!r}: {e}") from e
  family = type(model).__name__
  if family == "ViT":
    from zoo.analysis import vit_attention

    numbers = vit_attention.run(
        model, params, attention_weights, checkpoint=checkpoint, image=image,
        image_index=image_index, image_size=image_size, layer=layer, head=head,
        all_layers=all_layers,
    )
  elif family == "Transformer":
    from zoo.analysis import seq2seq_attention

    numbers = seq2seq_attention.run(
        checkpoint, text=text, target=target, weights_fn=attention_weights, layer=layer,
        head=head, all_layers=all_layers,
    )
  else:
    numbers = _text_run(model, params, checkpoint, text, layer, head, all_layers)
  impl = getattr(model.config, "attention_impl", None)
  if impl in NO_WEIGHTS_IMPLS:  # sow_weights switches those layers to the xla path
    numbers["note"] = (
        f"the checkpoint asks for attention_impl={impl!r}, which forms no weights; the maps "
        "were computed on the xla path (the same attention, materialised)."
    )
  return numbers


def _text_run(model, params, checkpoint, text, layer, head, all_layers) -> dict:
  """BERT / GPT: the maps over the tokens of ``text``."""
  import zoo

  tokenizer = zoo.load_tokenizer(checkpoint)
  if tokenizer is None:
    raise common.AnalysisError(f"{checkpoint!r} has no tokenizer to encode --text with.")
  ids = tokenizer.encode(text)
  if not ids:
    raise common.AnalysisError("--text encodes to no tokens.")
  weights = attention_weights(model, params, np.asarray([ids], np.int32))
  num_layers, num_heads = len(weights), weights[0][1].shape[1]
  chosen, heads = select(num_layers, num_heads, layer, head, all_layers)
  return dict(
      checkpoint=checkpoint, family=type(model).__name__, text=text,
      tokens=_labels(tokenizer, ids), num_layers=num_layers, num_heads=num_heads,
      layers=[
          dict(layer=i, name=weights[i][0],
               heads={str(h): weights[i][1][0, h].round(4) for h in heads})
          for i in chosen
      ],
  )


def plot(numbers: dict):
  """A grid of heatmaps: one row per layer shown, one column per head, token labels.

  ViT and Transformer numbers are drawn by their modules' ``plot``.
  """
  if numbers["family"] == "ViT":
    from zoo.analysis import vit_attention

    return vit_attention.plot(numbers)
  if numbers["family"] == "Transformer":
    from zoo.analysis import seq2seq_attention

    return seq2seq_attention.plot(numbers)
  plt = common.pyplot()
  rows, tokens = numbers["layers"], numbers["tokens"]
  ncols = len(rows[0]["heads"])
  per_row = ncols if len(rows) > 1 else min(ncols, 4)
  nrows = len(rows) * -(-ncols // per_row)
  size = 2.2 + 0.12 * len(tokens)
  fig, axes = plt.subplots(nrows, per_row, figsize=(size * per_row, size * nrows), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  cells = [(r, h, m) for r in rows for h, m in r["heads"].items()]
  for ax, (r, h, m) in zip(axes.flat, cells):
    ax.axis("on")
    ax.imshow(np.asarray(m), cmap="viridis", vmin=0, vmax=1)
    ax.set_title(f"layer {r['layer']} head {h}", fontsize=8)
    ticks = range(len(tokens))
    ax.set_xticks(ticks, tokens, rotation=90, fontsize=6)
    ax.set_yticks(ticks, tokens, fontsize=6)
  fig.suptitle(f"{numbers['family']} {numbers['checkpoint']}: rows = queries, columns = keys")
  fig.tight_layout()
  return fig


def add_arguments(parser) -> None:
  parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                      help="Hugging Face folder, zoo checkpoint, train.py workdir or short name "
                      "(BERT, GPT, ViT or Transformer)")
  parser.add_argument("--text", default=DEFAULT_TEXT, help="input text (a Transformer's source)")
  parser.add_argument("--target", default=None,
                      help="Transformer: target text to teacher-force (default: its translation)")
  parser.add_argument("--image", default=None,
                      help="ViT: image file (PNG / JPEG / .npy); default an offline digit")
  parser.add_argument("--image-index", type=int, default=0, help="ViT: which validation digit")
  parser.add_argument("--image-size", type=int, default=None,
                      help="ViT: resize the image to this (default the model's image_size)")
  parser.add_argument("--layer", type=int, default=None, help="layer to show (default last)")
  parser.add_argument("--head", type=int, default=None, help="one head (default all)")
  parser.add_argument("--all-layers", action="store_true", help="every layer, one row each")
  parser.add_argument("--attention-impl", default=None,
                      help="attention implementation requested (only xla forms the weights)")


def main(args) -> dict:
  numbers = run(checkpoint=args.checkpoint, text=args.text, layer=args.layer, head=args.head,
                all_layers=args.all_layers, attention_impl=args.attention_impl,
                image=args.image, image_index=args.image_index, image_size=args.image_size,
                target=args.target)
  common.write(args.out, "attention", plot(numbers), numbers)
  return numbers
