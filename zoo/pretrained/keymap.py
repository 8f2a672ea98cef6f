"""Explicit key maps between checkpoint tensors and zoo parameters, and the engine that runs them.

A converter lists :class:`Entry` objects. Each names one or more checkpoint tensors, one or
more zoo parameter paths (``"decoder/layers_0/attn/query/kernel"``) and a pair of functions
between them (transposes, head reshapes, fused QKV splits). The same list drives both
directions, so export is the exact inverse of import. The engine checks every tensor's shape
against the shape the zoo config implies *before* transforming it, and reports missing and
unused tensors by name.

Converters build their lists from the shared groups below (:func:`dense`, :func:`norm`,
:func:`attention`, :func:`encoder_layer`) and read activation names from one table
(:func:`activation_from_hf`, :func:`activation_to_hf`).

Shapes: D width, N heads, H head dim, F mlp width, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from flax import traverse_util

Arrays = list[np.ndarray]


# A block reader of a one-to-one entry: ``(read, index) -> zoo[index]``, where ``index`` is a
# tuple of ``slice(start, stop)`` in the zoo layout and ``read(src_index)`` returns that block
# of the checkpoint tensor. It lets a mesh load read only what each device holds.
SliceFn = Callable[[Callable[[tuple], np.ndarray], tuple], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Entry:
  """Checkpoint tensors ``src`` <-> zoo parameters ``dst`` through ``to_zoo`` / ``to_src``.

  ``slice_fn`` (one-to-one entries only; None = read whole tensors) reads one block of the
  zoo parameter from the matching block of the checkpoint tensor.
  """

  src: tuple[str, ...]
  dst: tuple[str, ...]
  to_zoo: Callable[[Arrays], Arrays]
  to_src: Callable[[Arrays], Arrays]
  slice_fn: SliceFn | None = None


def _one(fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[Arrays], Arrays]:
  return lambda xs: [fn(xs[0])]


def tensor(
    src: str,
    dst: str,
    to_zoo: Callable[[np.ndarray], np.ndarray] = lambda x: x,
    to_src: Callable[[np.ndarray], np.ndarray] = lambda x: x,
    slice_fn: SliceFn | None = None,
) -> Entry:
  """One checkpoint tensor <-> one zoo parameter."""
  return Entry((src,), (dst,), _one(to_zoo), _one(to_src), slice_fn)


def _rows(s: slice, h: int) -> slice:
  """Head slice ``s`` -> the rows ``[s.start * h, s.stop * h)`` of a flattened ``[N*H]`` axis."""
  return slice(s.start * h, s.stop * h)


# ----------------------------------------------------------------------------------------------
# Layout transforms, as (to_zoo, to_src) pairs. Torch nn.Linear stores [out, in]; flax
# kernels are [in, out] with heads split out: query/key/value [D, N, H], out [N, H, D].


def linear(src: str, dst: str) -> Entry:
  """``nn.Linear`` weight ``[out, in]`` <-> flax kernel ``[in, out]``."""
  return tensor(src, dst, lambda w: w.T, lambda k: k.T,
                lambda read, i: read((i[1], i[0])).T)


def linear_to_heads(src: str, dst: str, n: int, h: int) -> Entry:
  """``nn.Linear`` q/k/v weight ``[N*H, D]`` <-> ``[D, N, H]``."""

  def block(read, i):  # i = (D slice, N slice, H slice)
    w = read((_rows(i[1], h), i[0]))
    return w.T.reshape(w.shape[1], -1, h)[:, :, i[2]]

  return tensor(src, dst, lambda w: w.T.reshape(-1, n, h),
                lambda k: k.reshape(k.shape[0], -1).T, block)


def linear_from_heads(src: str, dst: str, n: int, h: int) -> Entry:
  """``nn.Linear`` out weight ``[D, N*H]`` <-> ``[N, H, D]``."""

  def block(read, i):  # i = (N slice, H slice, D slice)
    w = read((i[2], _rows(i[0], h)))
    return w.T.reshape(-1, h, w.shape[0])[:, i[1], :]

  return tensor(src, dst, lambda w: w.T.reshape(n, h, -1),
                lambda k: k.reshape(n * h, -1).T, block)


def heads_bias(src: str, dst: str, n: int, h: int) -> Entry:
  """q/k/v bias ``[N*H]`` <-> ``[N, H]``."""
  return tensor(src, dst, lambda b: b.reshape(n, h), lambda b: b.reshape(n * h),
                lambda read, i: read((_rows(i[0], h),)).reshape(-1, h)[:, i[1]])


def same(src: str, dst: str) -> Entry:
  return tensor(src, dst, slice_fn=lambda read, i: read(i))


def fused(src: str, dsts: Sequence[str], axis: int, to_part, from_part) -> Entry:
  """One checkpoint tensor split in equal parts along ``axis`` <-> several zoo parameters."""
  k = len(dsts)
  return Entry(
      (src,),
      tuple(dsts),
      lambda xs: [to_part(p) for p in np.split(xs[0], k, axis=axis)],
      lambda ps: [np.concatenate([from_part(p) for p in ps], axis=axis)],
  )


# ----------------------------------------------------------------------------------------------
# Builders: the entry groups Hugging Face's PyTorch modules share, named once.


def dense(src: str, dst: str) -> list[Entry]:
  """``nn.Linear`` ``{src}.weight`` / ``.bias`` <-> flax ``Dense`` ``{dst}/kernel`` / ``/bias``."""
  return [linear(f"{src}.weight", f"{dst}/kernel"), same(f"{src}.bias", f"{dst}/bias")]


def norm(src: str, dst: str) -> list[Entry]:
  """``nn.LayerNorm`` ``{src}.weight`` / ``.bias`` <-> flax ``{dst}/scale`` / ``/bias``."""
  return [same(f"{src}.weight", f"{dst}/scale"), same(f"{src}.bias", f"{dst}/bias")]


def attention(
    src: str, dst: str, n: int, h: int, *, qkv: tuple[str, str, str], out: str
) -> list[Entry]:
  """Separate q/k/v/out ``nn.Linear`` layers <-> zoo ``{dst}/{query,key,value,out}``.

  Args:
    src: the checkpoint prefix of the block (``"encoder.layer.0.attention"``).
    dst: the zoo attention module (``"encoder/layers_0/attn"``).
    n: number of heads N.
    h: head dim H.
    qkv: the query, key and value layer names under ``src`` (``("self.query", ...)``).
    out: the output projection's name under ``src`` (``"output.dense"``).

  Returns:
    Entries for q/k/v ``[N*H, D]`` -> ``[D, N, H]`` (biases ``[N, H]``) and out ``[D, N*H]``
    -> ``[N, H, D]``.
  """
  entries = []
  for hf_name, zoo_name in zip(qkv, ("query", "key", "value")):
    entries += [
        linear_to_heads(f"{src}.{hf_name}.weight", f"{dst}/{zoo_name}/kernel", n, h),
        heads_bias(f"{src}.{hf_name}.bias", f"{dst}/{zoo_name}/bias", n, h),
    ]
  entries += [
      linear_from_heads(f"{src}.{out}.weight", f"{dst}/out/kernel", n, h),
      same(f"{src}.{out}.bias", f"{dst}/out/bias"),
  ]
  return entries


@dataclasses.dataclass(frozen=True, kw_only=True)
class LayerNames:
  """Where one Hugging Face encoder layer keeps its parts, relative to the layer's prefix.

  Every zoo encoder layer (BERT, ViT and the Transformer's encoder and decoder) has the same
  parts: ``attn`` (q/k/v/out), ``attn_norm``, ``mlp/wi``, ``mlp/wo`` and ``mlp_norm``; only the
  checkpoint names differ.
  """

  attention: str  # the attention block (``"attention"``, ``"self_attn"``)
  qkv: tuple[str, str, str]  # q/k/v layers under ``attention``
  out: str  # the output projection under ``attention``
  attn_norm: str  # the LayerNorm around attention
  mlp_in: str  # the first feed-forward layer [F, D]
  mlp_out: str  # the second feed-forward layer [D, F]
  mlp_norm: str  # the LayerNorm around the feed-forward block


def encoder_layer(names: LayerNames, src: str, dst: str, n: int, h: int) -> list[Entry]:
  """One encoder layer: ``src`` (``"encoder.layer.0."``) <-> ``dst`` (``"encoder/layers_0/"``).

  Both prefixes end with their separator, as in the converters' per-layer loops.
  """
  return [
      *attention(f"{src}{names.attention}", f"{dst}attn", n, h, qkv=names.qkv, out=names.out),
      *norm(f"{src}{names.attn_norm}", f"{dst}attn_norm"),
      *dense(f"{src}{names.mlp_in}", f"{dst}mlp/wi"),
      *dense(f"{src}{names.mlp_out}", f"{dst}mlp/wo"),
      *norm(f"{src}{names.mlp_norm}", f"{dst}mlp_norm"),
  ]


# ----------------------------------------------------------------------------------------------
# Activation names.

# Hugging Face ``hidden_act`` / ``activation_function`` -> zoo activation. "gelu_new",
# "gelu_pytorch_tanh" and "gelu_fast" are one function (the tanh approximation) under three
# names; "swish" is transformers' older name for SiLU.
ACT_FROM_HF = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
# zoo activation -> the name written on export; converters override an entry where their
# model's own configs use another name for the same function (ViT "gelu_pytorch_tanh",
# Marian "swish"), so exported config.json files read like the ones transformers writes.
ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu"}


def _lookup(table: dict[str, str], value: str, what: str) -> str:
  if value not in table:
    raise ValueError(f"{what} {value!r} is not supported; known: {sorted(table)}.")
  return table[value]


def activation_from_hf(value: str, what: str = "activation") -> str:
  """The zoo activation for a Hugging Face activation name.

  Args:
    value: the config's ``hidden_act`` / ``activation_function``.
    what: how to name the field in the error (``"BERT hidden_act"``).

  Raises:
    ValueError: ``value`` is not in :data:`ACT_FROM_HF` (the message lists the known names).
  """
  return _lookup(ACT_FROM_HF, value, what)


def activation_to_hf(
    value: str, overrides: dict[str, str] | None = None, what: str = "activation"
) -> str:
  """The Hugging Face name written for a zoo activation (``overrides`` take precedence).

  Raises:
    ValueError: the activation has no Hugging Face name.
  """
  return _lookup({**ACT_TO_HF, **(overrides or {})}, value, what)


# ----------------------------------------------------------------------------------------------
# The engine.


def abstract_params(model: nn.Module, module) -> tuple[dict, dict]:
  """``(shapes, logical_specs)`` of ``model``'s params, flattened by ``/`` path, from shapes
  only."""
  args, kwargs = module.dummy_inputs(model.config)
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *args, **kwargs))["params"]
  specs = nn.get_partition_spec(boxed)
  shapes = nn.unbox(boxed)
  flat_shapes = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(shapes, sep="/").items()}
  flat_specs = traverse_util.flatten_dict(specs, sep="/")
  return flat_shapes, flat_specs


@dataclasses.dataclass(frozen=True)
class Lazy:
  """A zoo parameter not read yet: ``lazy[index]`` reads just that block from the checkpoint.

  ``np.asarray(lazy)`` reads all of it. Placing parameters on a mesh reads one block per
  device (``zoo.pretrained.assemble.finish``), so no host holds a whole sharded tensor.
  """

  shape: tuple[int, ...]
  dtype: np.dtype
  block: Callable[[tuple], np.ndarray]  # normalised index -> array

  @property
  def ndim(self) -> int:
    return len(self.shape)

  def __getitem__(self, index) -> np.ndarray:
    index = index if isinstance(index, tuple) else (index,)
    index = index + (slice(None),) * (len(self.shape) - len(index))
    norm = []
    for s, n in zip(index, self.shape, strict=True):
      start, stop, step = s.indices(n)
      if step != 1:
        raise ValueError(f"Lazy parameters read contiguous blocks; got step {step}.")
      norm.append(slice(start, stop))
    out = self.block(tuple(norm))
    want = tuple(s.stop - s.start for s in norm)
    if out.shape != want:  # a slice_fn bug, not a user error
      raise AssertionError(f"block {norm} has shape {out.shape}, expected {want}.")
    return out

  def __array__(self, dtype=None, copy=None):
    out = self[()]
    return out if dtype is None else out.astype(dtype)


def _zeros(shape) -> np.ndarray:
  return np.broadcast_to(np.zeros((), np.float32), shape)


def _shape_str(shape) -> str:
  return "(" + ", ".join(str(d) for d in shape) + ")"


def check_entries(entries: Sequence[Entry], zoo_shapes: dict[str, tuple]) -> None:
  """Every zoo parameter is produced exactly once (catches gaps in a key map)."""
  produced: dict[str, str] = {}
  for e in entries:
    for d in e.dst:
      if d in produced:
        raise AssertionError(f"key map writes zoo parameter {d} twice ({produced[d]}, {e.src}).")
      if d not in zoo_shapes:
        raise AssertionError(f"key map names {d} ({e.src}), which the zoo model does not have.")
      produced[d] = str(e.src)
  missing = sorted(set(zoo_shapes) - set(produced))
  if missing:
    raise AssertionError(f"key map leaves zoo parameters without a source: {missing}.")


class Lookup:
  """Finds tensors under their name, with or without the base-model prefix.

  Hugging Face saves a head model's base under a prefix (``transformer.``, ``bert.``,
  ``vit.``) but a bare base model without it, and checkpoints of either kind are loaded into
  the other (the original ``gpt2`` weights have no prefix although they are an LM).
  """

  def __init__(self, store, prefix: str = ""):
    self.store, self.prefix = store, prefix
    self.used: set[str] = set()

  def resolve(self, name: str) -> str | None:
    candidates = [name]
    if self.prefix and name.startswith(self.prefix):
      candidates.append(name[len(self.prefix) :])
    elif self.prefix:
      candidates.append(self.prefix + name)
    # TF-converted checkpoints (the original BERT release) call LayerNorm weights gamma/beta.
    for old, new in (("LayerNorm.weight", "LayerNorm.gamma"), ("LayerNorm.bias", "LayerNorm.beta")):
      candidates += [c[: -len(old)] + new for c in list(candidates) if c.endswith(old)]
    for c in candidates:
      if c in self.store:
        return c
    return None


def load_entries(
    entries: Sequence[Entry],
    store,
    zoo_shapes: dict[str, tuple],
    *,
    prefix: str = "",
    ignore: Sequence[str] = (),
    strict: bool = True,
    what: str = "the checkpoint",
    describe: str = "",
    lazy: bool = False,
) -> tuple[dict[str, np.ndarray], list[str]]:
  """Run ``entries`` over ``store``: flat ``{zoo path: array}`` and the unused tensor names.

  Args:
    entries: the key map.
    store: object with ``keys()``, ``shape(name)``, ``get(name)`` and ``in``.
    zoo_shapes: ``{zoo path: shape}`` the config implies.
    prefix: the base-model prefix (see :class:`Lookup`).
    ignore: ``fnmatch`` patterns of tensors that are fine to leave unused (buffers, tied
      duplicates).
    strict: unused tensors are an error (else returned for a warning).
    what: how to name the source in messages.
    describe: the config numbers that imply the expected shapes, for messages.
    lazy: entries with a ``slice_fn`` over a store that can read blocks give :class:`Lazy`
      values (shapes checked now, data read when placed); the others are read now.
  """
  check_entries(entries, zoo_shapes)
  lookup = Lookup(store, prefix)
  out: dict[str, np.ndarray] = {}
  hint = f" (implied by {describe})" if describe else ""
  for e in entries:
    want_src = [x.shape for x in e.to_src([_zeros(zoo_shapes[d]) for d in e.dst])]
    arrays = []
    for name, want in zip(e.src, want_src):
      found = lookup.resolve(name)
      if found is None:
        raise ValueError(
            f"{what} lacks tensor {name!r} of shape {_shape_str(want)}, needed for zoo parameter "
            f"{', '.join(e.dst)}{hint}."
        )
      got = store.shape(found)
      if tuple(got) != tuple(want):
        raise ValueError(
            f"tensor {found!r} in {what} has shape {_shape_str(got)} but the zoo model expects "
            f"{_shape_str(want)}{hint} for {', '.join(e.dst)} "
            f"{' '.join(_shape_str(zoo_shapes[d]) for d in e.dst)}; config.json and the "
            "weights disagree."
        )
      lookup.used.add(found)
      arrays.append(found)
    if lazy and e.slice_fn is not None and getattr(store, "can_slice", lambda _: False)(arrays[0]):
      found, fn = arrays[0], e.slice_fn
      read = lambda i, found=found: store.read_slice(found, i)  # noqa: E731
      out[e.dst[0]] = Lazy(zoo_shapes[e.dst[0]], store.dtype(found),
                           lambda i, fn=fn, read=read: fn(read, i))
      continue
    arrays = [np.asarray(store.get(name)) for name in arrays]
    for d, x in zip(e.dst, e.to_zoo(arrays)):
      if x.shape != zoo_shapes[d]:  # a transform bug, not a user error
        raise AssertionError(f"{e.src} -> {d}: got {x.shape}, expected {zoo_shapes[d]}.")
      out[d] = x
  unused = [
      k for k in store.keys()
      if k not in lookup.used and not any(fnmatch.fnmatchcase(k, p) for p in ignore)
  ]
  if unused and strict:
    listed = ", ".join(f"{k} {_shape_str(store.shape(k))}" for k in sorted(unused)[:20])
    more = f" and {len(unused) - 20} more" if len(unused) > 20 else ""
    raise ValueError(
        f"{what} has {len(unused)} tensors the zoo model does not use: {listed}{more}. The "
        "architecture in config.json may not match the weights; pass strict=False to load "
        "anyway."
    )
  return out, sorted(unused)


def export_entries(entries: Sequence[Entry], flat_params: dict[str, Any]) -> dict[str, np.ndarray]:
  """Run ``entries`` backwards: flat zoo params -> ``{tensor name: array}``."""
  check_entries(entries, {k: np.shape(v) for k, v in flat_params.items()})
  out = {}
  for e in entries:
    for name, x in zip(e.src, e.to_src([np.asarray(flat_params[d]) for d in e.dst])):
      out[name] = np.ascontiguousarray(x)
  return out


def fused_sizes(
    src: str, dsts: Sequence[str], sizes: Sequence[int], axis: int, to_parts, from_parts
) -> Entry:
  """One checkpoint tensor cut along ``axis`` into parts of ``sizes`` <-> several zoo
  parameters (Phi-3's ``qkv_proj``: query, key and value rows of unequal sizes under grouped
  KV heads); ``to_parts[i]`` / ``from_parts[i]`` transform part ``i``."""
  cuts = np.cumsum(sizes)[:-1]
  return Entry(
      (src,),
      tuple(dsts),
      lambda xs: [f(p) for f, p in zip(to_parts, np.split(xs[0], cuts, axis=axis), strict=True)],
      lambda ps: [np.concatenate([f(p) for f, p in zip(from_parts, ps, strict=True)], axis=axis)],
  )
