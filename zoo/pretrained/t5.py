"""Hugging Face T5 / mT5 (``T5ForConditionalGeneration``, ``MT5ForConditionalGeneration``,
``T5EncoderModel``, ``MT5EncoderModel``) <-> :class:`zoo.models.t5.T5`.

The 1.0 layout (t5-small ...: ``feed_forward_proj="relu"``, one ``DenseReluDense.wi``, the
head tied to ``shared`` with the decoder output scaled by ``d_model**-0.5``) and the v1.1 one
(v1.1, Flan-T5, mT5: ``"gated-gelu"``, ``wi_0`` = gate and ``wi_1``, an untied ``lm_head``
without the scale). Torch ``nn.Linear`` weights are ``[out, in]``; no layer has a bias.

=========================================================  ====================================
Hugging Face                                               zoo
=========================================================  ====================================
shared.weight [V, D]                                       shared/embedding
{enc,dec}oder.block.0.layer.0.SelfAttention                {enc,dec}oder_relpos/embedding [R, N]
  .relative_attention_bias.weight [R, N]
encoder.block.i.layer.0.SelfAttention.{q,k,v} [N*H, D]     encoder/layers_i/attn/{query,key,value}
encoder.block.i.layer.0.SelfAttention.o [D, N*H]           encoder/layers_i/attn/out [N, H, D]
encoder.block.i.layer.0.layer_norm [D]                     encoder/layers_i/attn_norm/scale
encoder.block.i.layer.1.DenseReluDense.wi (1.0) / wi_1     encoder/layers_i/mlp/wi [D, F]
encoder.block.i.layer.1.DenseReluDense.wi_0 (gated)        encoder/layers_i/mlp/gate [D, F]
encoder.block.i.layer.1.DenseReluDense.wo [D, F]           encoder/layers_i/mlp/wo [F, D]
encoder.block.i.layer.1.layer_norm [D]                     encoder/layers_i/mlp_norm/scale
decoder.block.i.layer.0 (SelfAttention, layer_norm)        decoder/layers_i/attn, attn_norm
decoder.block.i.layer.1 (EncDecAttention, layer_norm)      decoder/layers_i/cross_attn, cross_norm
decoder.block.i.layer.2 (DenseReluDense, layer_norm)       decoder/layers_i/mlp, mlp_norm
{enc,dec}oder.final_layer_norm.weight [D]                  {enc,dec}oder_norm/scale
lm_head.weight [V, D] (untied only)                        lm_head/kernel [D, V]
=========================================================  ====================================

transformers' own T5 quirks, handled here:

* Tie and scale are two facts. transformers 5's ``T5Config`` pops ``tie_word_embeddings``
  from ``config.json``, keeps it only as ``scale_decoder_outputs`` (False: no ``d_model**-0.5``
  before the head; a ``scale_decoder_outputs`` key, which transformers 5 writes, wins) and
  forces ``tie_word_embeddings=True``; the head is then untied at load exactly when the file
  holds an ``lm_head.weight`` that differs from ``shared.weight`` (with a warning). 4.x tied
  and scaled together. zoo: tied iff the file has no distinct ``lm_head.weight``, scaled as
  the config flag says. transformers 5's ``MT5*`` classes never scale, whatever the flag (4.x
  scaled tied mT5 models; released mT5 files say false). Export writes
  ``tie_word_embeddings`` = ``scale_decoder_outputs`` = zoo's scaling and ``lm_head.weight``
  when untied, so transformers 5 reloads the same logits (4.x too, except for the two pairs
  it cannot express: tied unscaled, untied scaled).
* ``encoder.embed_tokens.weight`` / ``decoder.embed_tokens.weight`` are copies of
  ``shared.weight``: skipped when equal, refused when not; a file without ``shared.weight``
  reads the table from them, never from ``lm_head.weight`` (transformers issue #48154).
* ``decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight``, an unused tensor
  of some files, is skipped.
* A file mixing the 1.0 and v1.1 feed-forward tensors, gated tensors under a non-gated
  ``feed_forward_proj`` (or the reverse), and an unknown ``feed_forward_proj`` are ValueErrors
  saying what to fix.

The value comparisons are :func:`prepare`, a view of the checkpoint's tensors with the copies
resolved. ``api.read_hf`` does not call it yet (``config_from_hf`` sees tensor names only);
until it does, the head is tied iff the file has no ``lm_head.weight`` (an equal copy loads as
an untied head with the same values and logits), ``shared.weight`` must be in the file and
``embed_tokens`` copies are skipped unread.

mT5 exports as ``T5ForConditionalGeneration`` / ``T5EncoderModel`` (the same computation when
unscaled); ``T5EncoderModel`` <-> ``encoder_only=True``. umT5's per-layer bias tables
(``relative_bias_per_layer``) have no T5 class and are refused on export.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from zoo.models.t5_config import FEED_FORWARD, T5Config, feed_forward_proj, from_feed_forward_proj
from zoo.pretrained import keymap as km
from zoo.pretrained.converter import Converter

MODEL_TYPE = "t5"
MODEL_TYPES = {
    "T5ForConditionalGeneration": "t5",
    "MT5ForConditionalGeneration": "mt5",
    "T5EncoderModel": "t5",
    "MT5EncoderModel": "mt5",
}
ENCODER_ONLY = ("T5EncoderModel", "MT5EncoderModel")
PREFIX = ""  # T5 classes save every tensor under its own name, without a base-model prefix
_FF = re.compile(r"^(encoder|decoder)\.block\.(\d+)\.layer\.\d+\.DenseReluDense\.(wi|wi_0|wi_1)\.")


class _View:
  """A tensor store seen through a name map ``{visible name: stored name}``."""

  def __init__(self, store, names: dict[str, str]):
    self.store, self.names = store, names

  def keys(self) -> list[str]:
    return list(self.names)

  def __contains__(self, key: str) -> bool:
    return key in self.names

  def shape(self, key: str):
    return self.store.shape(self.names[key])

  def get(self, key: str) -> np.ndarray:
    return self.store.get(self.names[key])

  def dtype(self, key: str):
    return self.store.dtype(self.names[key])

  def can_slice(self, key: str) -> bool:
    return self.store.can_slice(self.names[key])

  def read_slice(self, key: str, index):
    return self.store.read_slice(self.names[key], index)


def _equal(store, a: str, b: str, rows: int = 4096) -> bool:
  """Tensors ``a`` and ``b`` hold the same values (read ``rows`` rows at a time when possible)."""
  if tuple(store.shape(a)) != tuple(store.shape(b)):
    return False
  n = store.shape(a)[0] if store.shape(a) else 0
  if n <= rows or not (store.can_slice(a) and store.can_slice(b)):
    return bool(np.array_equal(store.get(a), store.get(b)))
  return all(
      np.array_equal(store.read_slice(a, (slice(i, i + rows),)),
                     store.read_slice(b, (slice(i, i + rows),)))
      for i in range(0, n, rows)
  )


def prepare(store):
  """The checkpoint's tensors with transformers' T5 copies resolved (see the module docstring).

  ``shared.weight`` is read from ``encoder.embed_tokens.weight`` (else the decoder's) when the
  file lacks it, never from ``lm_head.weight``; embedding copies and an ``lm_head.weight``
  equal to it are dropped (the head is then tied).

  Raises:
    ValueError: an ``embed_tokens`` table differs from ``shared.weight`` (transformers 5 would
      give that stack its own table; zoo's T5 has one).
  """
  names = {k: k for k in store.keys()}
  copies = [k for k in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight") if k in names]
  if "shared.weight" not in names and copies:
    names["shared.weight"] = names.pop(copies.pop(0))
  view = _View(store, names)
  for copy in copies:
    if not _equal(view, copy, "shared.weight"):
      raise ValueError(
          f"{copy} differs from shared.weight: transformers 5 would give that stack its own "
          "token table, and zoo's T5 has one table for encoder, decoder and head. Save the "
          "checkpoint with tied embeddings (one table), or drop the copy if shared.weight is "
          "the table meant."
      )
    del names[copy]
  if "lm_head.weight" in names and _equal(view, "lm_head.weight", "shared.weight"):
    del names["lm_head.weight"]  # an equal head is the tied one (transformers 5 ties it too)
  return view


def _ff_blocks(keys: Sequence[str]) -> tuple[list[str], list[str]]:
  """``(blocks with a 1.0 wi, blocks with v1.1 wi_0/wi_1)``, as ``"encoder.block.3"`` names."""
  plain, gated = set(), set()
  for key in keys:
    m = _FF.match(key)
    if m:
      (plain if m.group(3) == "wi" else gated).add(f"{m.group(1)}.block.{m.group(2)}")
  order = lambda b: (b.split(".")[0], int(b.split(".")[2]))  # noqa: E731
  return sorted(plain, key=order), sorted(gated, key=order)


def _listed(blocks: list[str]) -> str:
  return ", ".join(blocks[:4]) + (f" and {len(blocks) - 4} more" if len(blocks) > 4 else "")


def _feed_forward(hf: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
  """``activation`` and ``gated_mlp`` from ``feed_forward_proj``, checked against the tensors."""
  default = "gated-gelu" if hf.get("model_type") == "mt5" else "relu"
  proj = hf.get("feed_forward_proj", default)
  if proj not in FEED_FORWARD:
    raise ValueError(
        f"feed_forward_proj={proj!r} is not a T5 feed-forward zoo reads; it reads "
        f"{', '.join(map(repr, FEED_FORWARD))} ('relu' for T5 1.0, 'gated-gelu' for v1.1, "
        "Flan-T5 and mT5). Set the checkpoint's own value in config.json."
    )
  fields = from_feed_forward_proj(proj)
  plain, gated = _ff_blocks(keys)
  if plain and gated:
    raise ValueError(
        f"the weights mix the T5 1.0 feed-forward (DenseReluDense.wi.weight in {_listed(plain)}) "
        f"and the v1.1 one (DenseReluDense.wi_0/wi_1 in {_listed(gated)}); a T5 checkpoint has "
        "one layout in every block. Save the model again from one consistent model."
    )
  found, name = (gated, "gated (v1.1: wi_0/wi_1)") if gated else (plain, "plain (1.0: wi)")
  if found and bool(gated) != fields["gated_mlp"]:
    want = "'gated-gelu' (v1.1, Flan-T5, mT5)" if gated else "'relu' (T5 1.0)"
    raise ValueError(
        f"config.json says feed_forward_proj={proj!r} but the weights hold the {name} "
        f"feed-forward in {_listed(found)}; set feed_forward_proj to the checkpoint's, e.g. "
        f"{want}."
    )
  return fields


def _scale(hf: dict[str, Any]) -> bool:
  """Whether transformers 5 scales the decoder output by ``d_model**-0.5``."""
  if hf.get("model_type") == "mt5":
    return False  # transformers 5's MT5ForConditionalGeneration never scales
  if hf.get("scale_decoder_outputs") is not None:
    return bool(hf["scale_decoder_outputs"])
  return hf.get("tie_word_embeddings", True) is not False


def _first(value, default: int) -> int:
  if isinstance(value, (list, tuple)):
    value = value[0] if value else None
  return default if value is None else int(value)


def config_from_hf(hf: dict[str, Any], arch: str, keys: Sequence[str] = ()) -> dict[str, Any]:
  """T5 / mT5 ``config.json`` (and the file's tensor names) -> :class:`T5Config` fields."""
  keys = list(keys)
  layers = hf["num_layers"]
  pad = _first(hf.get("pad_token_id"), 0)
  encoder_only = arch in ENCODER_ONLY
  return dict(
      vocab_size=hf["vocab_size"],
      d_model=hf["d_model"],
      num_heads=hf["num_heads"],
      head_dim=hf["d_kv"],
      mlp_dim=hf["d_ff"],
      num_encoder_layers=layers,
      num_decoder_layers=hf.get("num_decoder_layers") or layers,
      relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
      relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
      **_feed_forward(hf, keys),
      norm_eps=float(hf.get("layer_norm_epsilon", 1e-6)),
      dropout_rate=float(hf.get("dropout_rate", 0.1)),
      tie_word_embeddings=encoder_only or "lm_head.weight" not in keys,
      scale_decoder_outputs=_scale(hf),
      initializer_factor=float(hf.get("initializer_factor", 1.0)),
      pad_id=pad,
      eos_id=_first(hf.get("eos_token_id"), 1),
      decoder_start_id=_first(hf.get("decoder_start_token_id"), pad),
      encoder_only=encoder_only,
  )


def config_to_hf(cfg: T5Config) -> dict[str, Any]:
  """:class:`T5Config` -> ``T5ForConditionalGeneration`` / ``T5EncoderModel`` ``config.json``."""
  problems = []
  if cfg.relative_bias_per_layer:
    problems.append("relative_bias_per_layer=True (umT5's per-layer tables; T5 has one per stack)")
  try:
    proj = feed_forward_proj(cfg)
  except ValueError as e:
    problems.append(str(e).rstrip("."))
  if problems:
    raise ValueError("this T5Config has no Hugging Face T5 equivalent: " + "; ".join(problems)
                     + ".")
  scale = cfg.scales_outputs and not cfg.encoder_only
  return {
      "architectures": ["T5EncoderModel" if cfg.encoder_only else "T5ForConditionalGeneration"],
      "model_type": MODEL_TYPE,
      "vocab_size": cfg.vocab_size,
      "d_model": cfg.d_model,
      "d_kv": cfg.head_dim,
      "d_ff": cfg.mlp_dim,
      "num_layers": cfg.num_encoder_layers,
      "num_decoder_layers": cfg.num_decoder_layers,
      "num_heads": cfg.num_heads,
      "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
      "relative_attention_max_distance": cfg.relative_attention_max_distance,
      "feed_forward_proj": proj,
      "layer_norm_epsilon": cfg.norm_eps,
      "dropout_rate": cfg.dropout_rate,
      "initializer_factor": cfg.initializer_factor,
      # transformers 5 reads the first as the scaling (and the second wins); 4.x as tie + scale.
      "tie_word_embeddings": scale,
      "scale_decoder_outputs": scale,
      "pad_token_id": cfg.pad_id,
      "eos_token_id": cfg.eos_id,
      "decoder_start_token_id": cfg.decoder_start_id,
      "is_encoder_decoder": not cfg.encoder_only,
      "use_cache": True,
  }


def ignore(hf: dict[str, Any], arch: str) -> tuple[str, ...]:
  """Copies of ``shared.weight``, the unused cross-attention bias; an encoder's decoder."""
  patterns = [
      "encoder.embed_tokens.weight",
      "decoder.embed_tokens.weight",
      "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",
  ]
  if arch in ENCODER_ONLY:  # T5EncoderModel reads a full checkpoint's encoder, as transformers
    patterns += ["decoder.*", "lm_head.weight"]
  return tuple(patterns)


def _attention(src: str, dst: str, n: int, h: int) -> list[km.Entry]:
  """T5Attention ``{q,k,v,o}.weight`` (no biases) <-> ``{query,key,value,out}/kernel``."""
  return [
      km.linear_to_heads(f"{src}.q.weight", f"{dst}/query/kernel", n, h),
      km.linear_to_heads(f"{src}.k.weight", f"{dst}/key/kernel", n, h),
      km.linear_to_heads(f"{src}.v.weight", f"{dst}/value/kernel", n, h),
      km.linear_from_heads(f"{src}.o.weight", f"{dst}/out/kernel", n, h),
  ]


def _block(cfg: T5Config, side: str, i: int) -> list[km.Entry]:
  n, h = cfg.num_heads, cfg.head_dim
  s, z = f"{side}.block.{i}.layer.", f"{side}/layers_{i}/"
  out = [*_attention(f"{s}0.SelfAttention", f"{z}attn", n, h),
         km.same(f"{s}0.layer_norm.weight", f"{z}attn_norm/scale")]
  ff = 1
  if side == "decoder":
    out += [*_attention(f"{s}1.EncDecAttention", f"{z}cross_attn", n, h),
            km.same(f"{s}1.layer_norm.weight", f"{z}cross_norm/scale")]
    ff = 2
  mlp = f"{s}{ff}.DenseReluDense."
  if cfg.gated_mlp:
    out += [km.linear(f"{mlp}wi_0.weight", f"{z}mlp/gate/kernel"),
            km.linear(f"{mlp}wi_1.weight", f"{z}mlp/wi/kernel")]
  else:
    out.append(km.linear(f"{mlp}wi.weight", f"{z}mlp/wi/kernel"))
  return out + [km.linear(f"{mlp}wo.weight", f"{z}mlp/wo/kernel"),
                km.same(f"{s}{ff}.layer_norm.weight", f"{z}mlp_norm/scale")]


def entries(cfg: T5Config, arch: str) -> list[km.Entry]:
  """The key map for ``cfg``."""
  out = [km.same("shared.weight", "shared/embedding")]
  sides = (("encoder", cfg.num_encoder_layers),)
  if not cfg.encoder_only:
    sides += (("decoder", cfg.num_decoder_layers),)
  for side, count in sides:
    out.append(km.same(f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                       f"{side}_relpos/embedding"))
    for i in range(count):
      out += _block(cfg, side, i)
    out.append(km.same(f"{side}.final_layer_norm.weight", f"{side}_norm/scale"))
  if not cfg.encoder_only and not cfg.tie_word_embeddings:
    out.append(km.linear("lm_head.weight", "lm_head/kernel"))
  return out


def describe(cfg: T5Config) -> str:
  return (
      f"vocab_size={cfg.vocab_size}, d_model={cfg.d_model}, num_heads={cfg.num_heads}, "
      f"d_kv={cfg.head_dim}, d_ff={cfg.mlp_dim}, relative_attention_num_buckets="
      f"{cfg.relative_attention_num_buckets}, gated={cfg.gated_mlp}"
  )


CONVERTER = Converter(
    module=__name__,
    config_cls=T5Config,
    model_type=MODEL_TYPE,
    architectures=tuple(MODEL_TYPES),
    prefix=PREFIX,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    entries=entries,
    ignore=ignore,
    describe=describe,
    model_types=MODEL_TYPES,
    prepare=prepare,
)
