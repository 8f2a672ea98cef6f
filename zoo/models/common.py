"""Pieces every family file uses: input checks, token embeddings with a tied output, stacks.

Input checks run in Python on concrete arrays, before tracing, so a bad token id or a too
long sequence is a ValueError with the numbers rather than silent garbage (XLA clamps
out-of-range gathers) or a deep trace. Under ``jit`` the values are tracers and only shapes
are checked.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from zoo import sharding as sh
from zoo.layers.blocks import BlockConfig
from zoo.layers.fused_cross_entropy import Projection
from zoo.layers.stack import REMAT_POLICIES, Stack

Array = jax.Array


def is_concrete(x: Any) -> bool:
  """True when ``x`` holds values (not a tracer inside jit/grad/scan)."""
  return not isinstance(x, jax.core.Tracer)


def check_rank(name: str, x: Array, rank: int, layout: str) -> None:
  if jnp.ndim(x) != rank:
    raise ValueError(f"{name} must be {layout} (rank {rank}); got shape {tuple(jnp.shape(x))}.")


def check_token_ids(name: str, ids: Array, vocab_size: int) -> None:
  """``ids`` must be integer ``[B, L]`` in ``[0, vocab_size)``."""
  check_rank(name, ids, 2, "[batch, length] integer token ids")
  if not jnp.issubdtype(jnp.asarray(ids).dtype if is_concrete(ids) else ids.dtype, jnp.integer):
    raise ValueError(f"{name} must be integer token ids; got dtype {ids.dtype}.")
  if is_concrete(ids) and np.size(ids):
    values = np.asarray(ids)  # host copy: numpy reductions, not jax ops inside a trace
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= vocab_size:
      raise ValueError(
          f"{name} holds ids in [{lo}, {hi}] but the vocabulary has {vocab_size} entries "
          f"(valid ids 0..{vocab_size - 1}); check the tokenizer matches the model's vocab_size."
      )


def check_length(name: str, length: int, max_len: int) -> None:
  if length > max_len:
    raise ValueError(
        f"{name} has length {length} but the model's max_len is {max_len} (learned position "
        "table); truncate the input, or build the model with a larger max_len."
    )


def check_stack_options(scan_layers: bool, remat_policy: str) -> None:
  if remat_policy not in REMAT_POLICIES:
    raise ValueError(f"remat_policy must be one of {REMAT_POLICIES}; got {remat_policy!r}.")
  if not isinstance(scan_layers, bool):
    raise ValueError(f"scan_layers must be a bool; got {scan_layers!r}.")


def check_layer_types(layer_types, num_layers: int, sliding_window: int | None) -> None:
  """A per-layer list of "local" / "global" attention: one per layer, a window for "local"."""
  bad = sorted({str(t) for t in layer_types} - {"local", "global"})
  if bad:
    raise ValueError(f"layer_types holds {bad}; each entry must be 'local' or 'global'.")
  if len(layer_types) != num_layers:
    raise ValueError(
        f"layer_types lists {len(layer_types)} layers but num_layers={num_layers}; give one "
        "kind per layer."
    )
  if "local" in layer_types and sliding_window is None:
    raise ValueError("layer_types has 'local' layers but sliding_window=None; set the window.")


def decode_start(module: nn.Module, length: int, decode: bool) -> Array | int:
  """First position of this call's tokens; a cache counter makes decoding calls continue.

  Call from a compact method. With ``decode`` the module keeps a ``"position"`` counter in its
  ``"cache"`` collection (created, at 0, by the call that allocates the cache) and advances it by
  ``length``; otherwise (or while allocating) the start is the Python int 0.
  """
  if not decode:
    return 0
  initialised = module.has_variable("cache", "position")
  counter = module.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
  if not initialised:
    return 0
  start = counter.value
  counter.value = start + length
  return start


def block_config(config: Any, **overrides) -> BlockConfig:
  """Build a :class:`BlockConfig` from the same-named fields of a family config."""
  names = {f.name for f in dataclasses.fields(BlockConfig)}
  values = {n: getattr(config, n) for n in names if hasattr(config, n)}
  values.update(overrides)
  return BlockConfig(**values)


def layer_stack(config: Any, block_cls: type, num_layers: int, name: str, **block_kwargs) -> Stack:
  """The stack of ``num_layers`` ``block_cls`` blocks of a family config.

  Blocks get ``config.block()``; ``config.scan_layers`` and ``config.remat_policy`` choose loop
  or scan and what is rematerialised. ``block_kwargs`` are further block attributes
  (``cross_attention=True``).
  """
  return Stack(
      block_cls,
      config.block(),
      num_layers,
      scan=config.scan_layers,
      remat_policy=config.remat_policy,
      block_kwargs=tuple(sorted(block_kwargs.items())),
      name=name,
  )


class TokenEmbedding(nn.Module):
  """A ``[V, D]`` embedding table; ``attend`` reuses it as the tied output projection."""

  vocab_size: int
  features: int
  init_std: float = 0.02
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.embedding = self.param(
        "embedding",
        nn.with_logical_partitioning(
            nn.initializers.normal(stddev=self.init_std), (sh.VOCAB, sh.EMBED)
        ),
        (self.vocab_size, self.features),
        self.param_dtype,
    )

  def __call__(self, ids: Array) -> Array:
    """``[B, L]`` ids -> ``[B, L, D]``."""
    return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

  def attend(self, x: Array) -> Array:
    """``[B, L, D]`` -> ``[B, L, V]`` float32 logits against the same table."""
    # A head's own dense layer can leave D sharded over "tensor" here; with the table's D on
    # "fsdp", XLA's partitioner produced wrong gradients on data x fsdp x tensor meshes
    # (tests/test_train_loop.py, gradient accumulation on (2, 2, 2)). D replicated is right.
    x = nn.with_logical_constraint(x, (sh.ACT_BATCH, sh.ACT_LENGTH, sh.ACT_EMBED))
    return jnp.einsum(
        "BLD,VD->BLV",
        x.astype(self.dtype),
        self.embedding.astype(self.dtype),
        preferred_element_type=jnp.float32,
    )

  def projection(
      self, x: Array, *, bias: Array | None = None, scale: float | None = None
  ) -> Projection:
    """What :meth:`attend` (times ``scale``, plus ``bias``) would project, as a record for
    :func:`zoo.layers.fused_cross_entropy.fused_cross_entropy` (the logits are never made)."""
    x = nn.with_logical_constraint(x, (sh.ACT_BATCH, sh.ACT_LENGTH, sh.ACT_EMBED))
    return Projection(
        hidden=x, weight=self.embedding, bias=bias, transposed=True, scale=scale, dtype=self.dtype
    )


class LMHead(nn.Module):
  """An untied output projection: a ``[D, V]`` ``kernel`` without bias.

  ``__call__`` gives the float32 logits, :meth:`projection` the record a fused loss takes.
  """

  vocab_size: int
  features: int
  kernel_init: Any = nn.initializers.normal(stddev=0.02)
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.kernel = self.param(
        "kernel",
        nn.with_logical_partitioning(self.kernel_init, (sh.EMBED, sh.VOCAB)),
        (self.features, self.vocab_size),
        self.param_dtype,
    )

  def __call__(self, x: Array) -> Array:
    """``[B, L, D]`` -> ``[B, L, V]`` float32 logits (float32 accumulation, as :meth:`attend`)."""
    return jnp.einsum(
        "BLD,DV->BLV",
        x.astype(self.dtype),
        self.kernel.astype(self.dtype),
        preferred_element_type=jnp.float32,
    )

  def projection(
      self, x: Array, *, bias: Array | None = None, scale: float | None = None
  ) -> Projection:
    """What ``__call__`` (on ``x * scale``, plus ``bias``) would project, as a record."""
    return Projection(
        hidden=x, weight=self.kernel, bias=bias, scale=scale, dtype=self.dtype
    )


# ----------------------------------------------------------------------------------------------
# FLOPs.


def count(tree: Any) -> int:
  """Number of elements in a tree of arrays or shapes."""
  return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(nn.unbox(tree))))


def train_flops(
    matmuls: list[tuple[int, int]], attention: list[tuple[int, int, int, int, bool]]
) -> dict[str, float]:
  """Training FLOPs of one step under two conventions (forward + backward = 3 x forward).

  Args:
    matmuls: ``(params, tokens)`` pairs: ``6 * params`` FLOPs for each token the params see
      (Kaplan et al. 2020; PaLM appendix B). Lookup-only tables (positions, segments) are left
      out by the caller; a tied output projection is counted once, as the matmul it is.
    attention: ``(layers, d, query_tokens, key_length, causal)``: ``12 * layers * d *
      key_length`` FLOPs per query token for q.k and weights.v.

  Returns:
    ``{"full": 6N + 12·L·d·T, "causal_half": the same with causal attention halved}``, summed
    over the batch. For encoders (no causal attention) the two are equal.
  """
  dense = sum(6.0 * p * t for p, t in matmuls)
  full = half = dense
  for layers, d, q_tokens, key_len, causal in attention:
    a = 12.0 * layers * d * key_len * q_tokens
    full += a
    half += a / 2 if causal else a
  return {"full": full, "causal_half": half}


# ----------------------------------------------------------------------------------------------
# Field checks shared by every family config.

# Integer fields that may be 0 (everything else integer must be >= 1).
NON_NEGATIVE_INTS = ("pad_id", "position_offset", "num_classes")


def check_fields(config: Any) -> None:
  """Type and range of every field of a frozen config dataclass, from its annotations.

  Integers must be ints (not bools or strings) and >= 1 (0 allowed for
  :data:`NON_NEGATIVE_INTS`); floats numbers; booleans bools; dropout rates in [0, 1); epsilons,
  ``init_std`` and ``rope_base`` > 0; Literal fields one of their values. Runs first in each
  family's ``__post_init__``, so a bad value is named before anything is built from it.
  """
  hints = typing.get_type_hints(type(config))
  for field in dataclasses.fields(config):
    name, value = field.name, getattr(config, field.name)
    allowed = union_args(hints[name])
    kinds = [a for a in allowed if a is not type(None)]
    where = f"{type(config).__name__}.{name}={value!r}"
    if value is None:
      if len(kinds) == len(allowed):
        raise ValueError(f"{where}: this field must be set.")
    elif len(kinds) == 1:
      _check_value(where, name, value, kinds[0])


def _check_value(where: str, name: str, value: Any, kind: Any) -> None:
  if typing.get_origin(kind) is typing.Literal:
    if value not in typing.get_args(kind):
      owner = where.split("=", 1)[0]
      raise ValueError(f"{owner} must be one of {typing.get_args(kind)}; got {value!r}.")
  elif kind is bool and not isinstance(value, bool):
    raise ValueError(f"{where} must be True or False.")
  elif kind is int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
      raise ValueError(f"{where} must be an integer (got {type(value).__name__}).")
    low = 0 if name in NON_NEGATIVE_INTS else 1
    if value < low:
      raise ValueError(f"{where} must be >= {low}.")
  elif kind is float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
      raise ValueError(f"{where} must be a number (got {type(value).__name__}).")
    if "dropout" in name and not 0.0 <= value < 1.0:
      owner = where.split("=", 1)[0]
      raise ValueError(f"{owner} must be in [0, 1) (a dropout rate); got {value!r}.")
    if (name.endswith("eps") or name in ("init_std", "rope_base")) and not value > 0:
      raise ValueError(f"{where} must be > 0.")


def union_args(hint: Any) -> tuple:
  """The members of ``A | B`` / ``Optional[A]`` (``(hint,)`` for any other annotation)."""
  if typing.get_origin(hint) in (typing.Union, types.UnionType):
    return typing.get_args(hint)
  return (hint,)
