"""Attention maps of a checkpoint of any family: ``python -m zoo.analysis attention``.

What is shown follows the family's declared inputs (``zoo.registry.Family.inputs``), never its
name. Token ids (BERT, GPT): the self-attention over the tokens of ``--text``, drawn here;
images (ViT): self-attention over the patches (+ [CLS]) of an image, and attention rollout
(:mod:`zoo.analysis.vit_attention`); source and target ids (the Transformer): encoder
self-attention, decoder masked self-attention and cross-attention
(:mod:`zoo.analysis.seq2seq_attention`). The weights come from
:func:`zoo.analysis.attention_weights.attention_weights`, which every view imports.
"""

from __future__ import annotations

import numpy as np

from zoo import registry
from zoo.analysis import common, seq2seq_attention, vit_attention
from zoo.analysis.attention_weights import NO_WEIGHTS_IMPLS, attention_weights, select

DEFAULT_CHECKPOINT = "all-MiniLM-L6-v2"
DEFAULT_TEXT = "The cat sat on the mat because it was tired."


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
    text: the input sentence (an encoder-decoder's source).
    layer: layer to show (negative counts from the end); default the last.
    head: one head only; default all heads.
    all_layers: show every layer (rows) instead of one.
    attention_impl: an implementation requested for the run; only ``"xla"`` (or None) forms
      the weights.
    image: the input image file of a family of images; default an offline digit
      (``image_index``).
    image_index: which validation digit.
    image_size: resize the image to this (a multiple of the patch size); default the model's.
    target: an encoder-decoder's target text (teacher-forced); default its greedy translation.

  Returns:
    Token ids: ``{"checkpoint", "family", "inputs", "tokens", "layers": [{"layer", "name",
    "heads": {h: [L, L]}}], "num_layers", "num_heads"}``; images: see
    :func:`vit_attention.run`; source and target: see :func:`seq2seq_attention.run`. Every
    view's numbers carry ``"inputs"`` (the family's input kind), which :func:`plot` reads.
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
  kind = registry.family_of(model).inputs
  if kind == "images":
    numbers = vit_attention.run(
        model, params, checkpoint=checkpoint, image=image, image_index=image_index,
        image_size=image_size, layer=layer, head=head, all_layers=all_layers,
    )
  elif kind == "source_target":
    numbers = seq2seq_attention.run(
        checkpoint, text=text, target=target, layer=layer, head=head, all_layers=all_layers,
    )
  else:
    numbers = _text_run(model, params, checkpoint, text, layer, head, all_layers)
  numbers["inputs"] = kind
  impl = getattr(model.config, "attention_impl", None)
  if impl in NO_WEIGHTS_IMPLS:  # sow_weights switches those layers to the xla path
    numbers["note"] = (
        f"the checkpoint asks for attention_impl={impl!r}, which forms no weights; the maps "
        "were computed on the xla path (the same attention, materialised)."
    )
  return numbers


def _text_run(model, params, checkpoint, text, layer, head, all_layers) -> dict:
  """A model of token ids (BERT, GPT): the maps over the tokens of ``text``."""
  import zoo

  tokenizer = zoo.load_tokenizer(checkpoint, required=False)
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

  The maps of images and of source and target ids are drawn by their modules' ``plot``.
  """
  if numbers["inputs"] == "images":
    return vit_attention.plot(numbers)
  if numbers["inputs"] == "source_target":
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
  models = ", ".join(f.model_cls.__name__ for f in registry.families())
  parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                      help="Hugging Face folder, zoo checkpoint, train.py workdir or short name "
                      f"(any family: {models})")
  parser.add_argument("--text", default=DEFAULT_TEXT,
                      help="input text (an encoder-decoder's source)")
  parser.add_argument("--target", default=None,
                      help="encoder-decoder: target text to teacher-force (default: its "
                      "translation)")
  parser.add_argument("--image", default=None,
                      help="images (ViT): image file (PNG / JPEG / .npy); default an offline "
                      "digit")
  parser.add_argument("--image-index", type=int, default=0,
                      help="images (ViT): which validation digit")
  parser.add_argument("--image-size", type=int, default=None,
                      help="images (ViT): resize the image to this (default the model's "
                      "image_size)")
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
