"""Encoder-decoder attention maps: encoder self-attention, decoder masked self-attention and
cross-attention (decoder tokens x source tokens) of a translation checkpoint.

The source is ``--text``; the decoder input is the start token followed by ``--target`` (teacher
forcing), or by the model's own greedy translation when no target is given. Checkpoints load
as ``python -m zoo.generate`` loads them (:func:`zoo.generate.cli.load`: a Hugging Face Marian
folder, a zoo checkpoint folder or a translation workdir), with their tokenizer and special
tokens.
"""

from __future__ import annotations

import numpy as np

from zoo.analysis import common
from zoo.analysis.attention_weights import attention_weights, select

KINDS = (  # (key, module-path suffix, title)
    ("encoder", "attn", "encoder self-attention"),
    ("decoder", "attn", "decoder masked self-attention"),
    ("cross", "cross_attn", "cross-attention (rows: decoder, columns: source)"),
)
MAX_NEW_TOKENS = 24


def group(weights: list[tuple[str, np.ndarray]]) -> dict[str, list[tuple[str, np.ndarray]]]:
  """``attention_weights`` of an encoder-decoder split by kind, each in layer order."""
  out = {key: [] for key, _, _ in KINDS}
  for name, w in weights:
    stack, _, module = name.rpartition("/")
    if stack.startswith("encoder"):
      out["encoder"].append((name, w))
    elif module == "cross_attn":
      out["cross"].append((name, w))
    else:
      out["decoder"].append((name, w))
  return out


def _load(checkpoint: str):
  from zoo.generate import cli

  try:
    return cli.load(checkpoint)
  except (OSError, ValueError, KeyError) as e:
    raise common.AnalysisError(f"cannot read checkpoint {checkpoint!r}: {e}") from e


def _ids(loaded, text: str, what: str, target: bool) -> list[int]:
  if loaded.tokenizer is None:
    raise common.AnalysisError(
        f"{loaded.where} has no tokenizer to encode the {what} with; a train.py workdir needs "
        "the config.json its run wrote next to the checkpoints."
    )
  tok = loaded.tokenizer
  try:
    ids = list(tok.encode(text, target=True) if target else tok.encode(text))
  except TypeError:  # a tokenizer without a separate target vocabulary
    ids = list(tok.encode(text))
  if not loaded.specials_in_encode and loaded.eos_id is not None:
    ids = ids + [loaded.eos_id]  # zoo translation sources and targets end with EOS
  if not ids:
    raise common.AnalysisError(f"the {what} encodes to no tokens; give some text.")
  return ids


def _labels(tokenizer, ids) -> list[str]:
  """One label per id: the token's text, else the special token's name, else ``<id>``."""
  backend = getattr(tokenizer, "backend", None)
  names = {getattr(tokenizer, f"{n}_id", None): f"<{n}>" for n in ("pad", "bos", "eos", "unk")}
  out = []
  for i in (int(i) for i in ids):
    if hasattr(backend, "id_to_token"):
      text = backend.id_to_token(i)
    else:
      try:
        text = tokenizer.decode([i], skip_special_tokens=False)
      except TypeError:  # zoo.data's tokenizers: decode(ids) drops specials
        text = tokenizer.decode([i])
    out.append(text if text and text.strip() else names.get(i, repr(text) if text else f"<{i}>"))
  return out


def run(checkpoint: str, *, text: str, target: str | None, layer: int | None = None,
        head: int | None = None, all_layers: bool = False) -> dict:
  """Encode ``text``, form the decoder input, return the three kinds of maps to plot."""
  from zoo.generate import decoder, seq2seq

  loaded = _load(checkpoint)
  model, params = loaded.model, loaded.params
  if loaded.decoder_start_id is None:
    raise common.AnalysisError(
        f"{loaded.where} names no decoder start token (BOS / decoder_start_token_id)."
    )
  src = _ids(loaded, text, "--text", target=False)
  if target is not None:
    tgt = _ids(loaded, target, "--target", target=True)
  else:
    out = seq2seq.generate(
        model, params, [src], max_new_tokens=MAX_NEW_TOKENS,
        decoder_start_id=loaded.decoder_start_id, eos_id=loaded.eos_id, num_beams=1,
        suppress_ids=loaded.suppress_ids,
    )
    tgt = decoder.until_eos(list(np.asarray(out[0])), loaded.eos_id)
  dec_in = [int(loaded.decoder_start_id)] + [int(t) for t in tgt]
  if loaded.eos_id is not None and dec_in[-1] == loaded.eos_id and len(dec_in) > 1:
    dec_in = dec_in[:-1]  # EOS is predicted, never fed
  groups = group(attention_weights(model, params, np.asarray([src], np.int32),
                                   tgt_ids=np.asarray([dec_in], np.int32)))
  numbers = dict(
      checkpoint=checkpoint, family=type(model).__name__, text=text, target=target,
      source_tokens=_labels(loaded.tokenizer, src),
      decoder_tokens=_labels(loaded.tokenizer, dec_in),
      translation=None if target is not None else loaded.tokenizer.decode(tgt),
      num_heads=int(groups["cross"][0][1].shape[1]),
  )
  what = {"encoder": "encoder layers", "decoder": "decoder layers", "cross": "decoder layers"}
  for key, _, _ in KINDS:
    ws = groups[key]
    chosen, heads = select(len(ws), ws[0][1].shape[1], layer, head, all_layers, what[key])
    numbers[f"num_{key}_layers"] = len(ws)
    numbers[key] = [
        dict(layer=i, name=ws[i][0], heads={str(h): ws[i][1][0, h].round(4) for h in heads})
        for i in chosen
    ]
  return numbers


def plot(numbers: dict):
  """Three blocks of rows (encoder, decoder, cross), one column per head, token labels."""
  plt = common.pyplot()
  src, tgt = numbers["source_tokens"], numbers["decoder_tokens"]
  rows = [(key, title, r) for key, _, title in KINDS for r in numbers[key]]
  ncols = len(rows[0][2]["heads"])
  size = 2.2 + 0.12 * max(len(src), len(tgt))
  fig, axes = plt.subplots(len(rows), ncols, figsize=(size * ncols, size * len(rows)),
                           squeeze=False)
  for (key, title, r), line in zip(rows, axes):
    ys = src if key == "encoder" else tgt
    xs = tgt if key == "decoder" else src
    for ax, (h, m) in zip(line, r["heads"].items()):
      ax.imshow(np.asarray(m), cmap="viridis", vmin=0, vmax=1)
      ax.set_title(f"{title}\nlayer {r['layer']} head {h}", fontsize=7)
      ax.set_xticks(range(len(xs)), xs, rotation=90, fontsize=6)
      ax.set_yticks(range(len(ys)), ys, fontsize=6)
  fig.suptitle(f"{numbers['family']} {numbers['checkpoint']}: rows = queries, columns = keys")
  fig.tight_layout(rect=(0, 0, 1, 0.98))
  return fig
