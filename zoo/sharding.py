"""Logical axis names shared by every layer, and the default logical -> mesh rules.

Model code only ever names *logical* axes (``EMBED``, ``HEADS`` ...). A run config maps
them onto the physical mesh axes ``data``, ``fsdp`` and ``tensor``; changing the parallelism
of a run never touches model code.
"""

from __future__ import annotations

# Parameter axes.
EMBED = "embed"  # d_model
MLP = "mlp"  # feed-forward hidden
HEADS = "heads"  # query heads
KV_HEADS = "kv_heads"  # key/value heads (grouped-query attention)
HEAD_DIM = "head_dim"
VOCAB = "vocab"
LAYERS = "layers"  # the stacked axis of scanned layers
NORM = "norm"  # norm scales and biases: never sharded
CLASSES = "classes"  # classifier outputs
POSITIONS = "positions"  # rows of a learned position table
PATCH = "patch"  # flattened patch pixels of the ViT stem

# Activation axes (constrained at block boundaries, on the MLP hidden layer and on the input
# of a tied output projection).
ACT_BATCH = "activation_batch"
ACT_LENGTH = "activation_length"
ACT_EMBED = "activation_embed"
ACT_MLP = "activation_mlp"

# Physical mesh axes.
DATA = "data"
FSDP = "fsdp"
TENSOR = "tensor"
MESH_AXES = (DATA, FSDP, TENSOR)

# Data parallel over data x fsdp, parameters sharded over fsdp (ZeRO-3 style) and tensor
# parallel (Megatron style) over heads / mlp / vocab. A logical axis that maps to None is
# replicated.
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    (ACT_BATCH, (DATA, FSDP)),
    (ACT_LENGTH, None),
    (ACT_EMBED, None),
    (ACT_MLP, TENSOR),
    (EMBED, FSDP),
    (MLP, TENSOR),
    (HEADS, TENSOR),
    (KV_HEADS, TENSOR),
    (HEAD_DIM, None),
    (VOCAB, TENSOR),
    (LAYERS, None),
    (NORM, None),
    (CLASSES, None),
    (POSITIONS, None),
    (PATCH, None),
)
