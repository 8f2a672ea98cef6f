"""The families of zoo models and the training tasks, each a record registered by its own module.

A family (``zoo/models/gpt.py`` ...) ends with ``registry.register(Family(...))``: its config
and model classes, how to make dummy inputs, how many FLOPs a training step costs, which
training tasks it serves, which converter modules under ``zoo.pretrained`` read and write its
checkpoints, and how it checks its inputs. Every module of ``zoo/models`` is imported on the
first look-up, so a new family is a new file there. Everything else asks this module; nothing
outside a family compares family names.

What a family can do beyond a forward pass is a typed capability on its record: a
:class:`CausalLM` (cached sampling), a :class:`Seq2Seq` (encoder once, cached decoder) or a
:class:`TextEncoder` (hidden states of a tokenizer's batch). Decoding asks for one with
``causal_lm(model, use)`` / ``seq2seq(model, use)``, never for a family's name or its config's
fields.

Records are keyed by the config class (``family_of(config)`` is a dictionary lookup); the
short name (``"gpt"``) is what presets and saved configs use to point at a family.

Tasks (``zoo/tasks/<name>.py``) register a ``zoo.tasks.Task`` subclass with
:func:`register_task`; :func:`task` gives its record by name. Every module of ``zoo/tasks`` is
imported on the first look-up, so a new task is a new file there.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
import types
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp

Shapes = Mapping[str, tuple[int, ...]]
# What a model's __call__ takes first: token ids [B, L], images [B, H, W, C], or source ids
# [B, S] and target ids [B, T] (an encoder-decoder).
InputKind = Literal["tokens", "images", "source_target"]
Cache = Any  # a model's "cache" collection: a pytree of arrays, batch axis inside


def _none(config: Any) -> None:
  """The default of an id the config does not name (the tokenizer or checkpoint does)."""
  del config


@dataclasses.dataclass(frozen=True, kw_only=True)
class CausalLM:
  """What cached sampling (``zoo.generate.generate``) needs of a decoder-only language model.

  Attributes:
    init_cache: ``(model, batch_size, num_slots) -> cache``: an empty (all zero) KV cache of
      ``num_slots`` positions, built from shapes; it is traced inside ``jit``.
    apply_cached: ``(model, params, cache, tokens_BxL, positions_BxL, valid_BxS) ->
      (logits_BxLxV, cache)``: the next ``L`` tokens at ``positions`` written to the next cache
      slots; keys at slots where ``valid_BxS`` (bool, ``S = num_slots``) is False are never
      attended to (left padding).
    context_length: ``config -> int | None``: the longest sequence its positions allow (a
      learned table's size); None = unbounded (RoPE, sinusoids).
    vocab_size: ``config -> int``.
    prompt_limit: ``config -> int | None``: the longest prompt it accepts when that is shorter
      than ``context_length`` (the context it was built for); None = ``context_length``.
    pad_id: ``config -> int | None``: the config's padding id, if it names one.
    eos_id: ``config -> int | None``: the config's end-of-sequence id, if it names one.
  """

  init_cache: Callable[[Any, int, int], Cache]
  apply_cached: Callable[..., tuple[Any, Cache]]
  context_length: Callable[[Any], int | None]
  vocab_size: Callable[[Any], int]
  prompt_limit: Callable[[Any], int | None] | None = None
  pad_id: Callable[[Any], int | None] = _none
  eos_id: Callable[[Any], int | None] = _none

  def longest_prompt(self, config: Any) -> int | None:
    """The longest prompt :func:`zoo.generate.generate` accepts (None = any)."""
    return (self.prompt_limit or self.context_length)(config)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Seq2Seq:
  """What ``zoo.generate.translate_ids`` (greedy and beam search) needs of an encoder-decoder.

  Attributes:
    encode: ``(model, params, src_BxS) -> encoded``: what the decoder attends to (a pytree of
      arrays with the batch first; beam search repeats it per beam).
    decode_step: ``(model, params, cache, tgt_BxL, encoded, src_BxS) -> (logits_BxLxV,
      cache)``: the decoder over the next ``L`` target tokens, writing them to its KV cache
      (``src_BxS`` carries the source padding).
    init_cache: ``(model, batch_size, num_slots) -> cache``: an empty decoder cache of
      ``num_slots`` target positions, built from shapes; it is traced inside ``jit``.
    pad_id: ``config -> int``: source padding, and what finished rows emit.
    source_vocab: ``config -> int``.
    target_vocab: ``config -> int``.
    source_length: ``config -> int | None``: the longest source; None = unbounded.
    target_length: ``config -> int | None``: the decoder's positions, the start token's
      included (``target_length - 1`` new tokens fit); None = unbounded.
    start_id: ``config -> int | None``: the decoder start id, if the config names one.
    eos_id: ``config -> int | None``: the end-of-sequence id, if the config names one.
  """

  encode: Callable[[Any, Any, Any], Any]
  decode_step: Callable[..., tuple[Any, Cache]]
  init_cache: Callable[[Any, int, int], Cache]
  pad_id: Callable[[Any], int]
  source_vocab: Callable[[Any], int]
  target_vocab: Callable[[Any], int]
  source_length: Callable[[Any], int | None]
  target_length: Callable[[Any], int | None]
  start_id: Callable[[Any], int | None] = _none
  eos_id: Callable[[Any], int | None] = _none


@dataclasses.dataclass(frozen=True, kw_only=True)
class TextEncoder:
  """A bidirectional text encoder: what word and sentence embedding analyses read.

  Attributes:
    token_embeddings: ``params -> [V, D]``: the input token embedding table.
    hidden_states: ``(model, params, batch) -> [B, L, D]``: the last hidden states of a
      tokenizer's batch (``input_ids``, ``attention_mask`` and whatever else the family reads).
  """

  token_embeddings: Callable[[Any], Any]
  hidden_states: Callable[[Any, Any, Mapping[str, Any]], Any]


@dataclasses.dataclass(frozen=True)
class Family:
  """What the rest of zoo needs to know about one family of models.

  Attributes:
    name: short name used by presets and saved configs (``"gpt"``).
    config_cls: the frozen config dataclass.
    model_cls: the linen Module, built as ``model_cls(config)``.
    dummy_inputs: ``config -> (args, kwargs)`` for ``model.init`` (only shapes matter).
    train_flops: ``(config, params, batch_shapes) -> {"full": F, "causal_half": F}``: training
      FLOPs of one step on a batch of those shapes (``params`` may be shapes only).
    tasks: the names of the registered tasks (``task_names()``) this family can be trained on.
    converters: modules under ``zoo.pretrained`` that import/export its checkpoints.
    validate: ``(config, inputs)`` -> None, raising ValueError on bad model inputs (a dict of
      the model's call arguments); None when the family checks inside its ``__call__`` only.
    inputs: what ``__call__`` takes first (:data:`InputKind`): token ids, images, or source and
      target ids.
    causal_lm: how to sample from it with a KV cache; None = it is no causal language model.
    seq2seq: how to decode it as an encoder-decoder; None = it is none.
    text_encoder: how to read its hidden states as text embeddings; None = it is none.
  """

  name: str
  config_cls: type
  model_cls: type
  dummy_inputs: Callable[[Any], tuple[tuple, dict]]
  train_flops: Callable[[Any, Any, Shapes], dict[str, float]]
  tasks: tuple[str, ...]
  converters: tuple[str, ...] = ()
  validate: Callable[[Any, Mapping[str, Any]], None] | None = None
  inputs: InputKind = "tokens"
  causal_lm: CausalLM | None = None
  seq2seq: Seq2Seq | None = None
  text_encoder: TextEncoder | None = None


_BY_CONFIG: dict[type, Family] = {}
_BY_NAME: dict[str, Family] = {}
# Every module of this package that defines a family registers it when imported: a new
# family is a new file there.
FAMILY_PACKAGE = "zoo.models"
_loaded = False


def register(family: Family) -> Family:
  """Add ``family`` (called once, at the bottom of the family's module)."""
  if family.name in _BY_NAME and _BY_NAME[family.name].config_cls is not family.config_cls:
    raise ValueError(f"a family named {family.name!r} is already registered.")
  _BY_CONFIG[family.config_cls] = family
  _BY_NAME[family.name] = family
  return family


def unregister(name: str) -> Family:
  """Remove the family called ``name`` (tests register throwaway families); returns it."""
  family = get(name)
  del _BY_NAME[name], _BY_CONFIG[family.config_cls]
  return family


def _load() -> None:
  global _loaded
  if not _loaded:
    _loaded = True
    _import_package(FAMILY_PACKAGE)


def _import_package(name: str) -> None:
  """Import every module of the package ``name`` (file-name order), which registers its
  records."""
  package = importlib.import_module(name)
  for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
    importlib.import_module(f"{name}.{info.name}")


def families() -> list[Family]:
  """Every registered family (the modules of ``zoo/models`` in file-name order)."""
  _load()
  return list(_BY_NAME.values())


def did_you_mean(name: Any, known, *, listing: bool = True) -> str:
  """`` Did you mean a, b?`` for the closest ``known`` spellings of ``name``; when none is close,
  `` Known: ...`` (or ``""`` without ``listing``). The one "did you mean" of zoo."""
  known = sorted(map(str, known))
  close = difflib.get_close_matches(str(name), known, n=3)
  if close:
    return f" Did you mean {', '.join(close)}?"
  return f" Known: {', '.join(known)}." if listing else ""


def unknown(name: Any, known, what: str) -> ValueError:
  """A ValueError for an unknown ``name`` that lists the closest ``known`` spellings."""
  return ValueError(f"unknown {what} {name!r}.{did_you_mean(name, known)}")


def scanned(config: Any) -> bool:
  """Whether a model config stacks its layers with ``nn.scan`` (params carry a layer axis)."""
  return bool(getattr(config, "scan_layers", False))


def get(name: str) -> Family:
  """The family called ``name`` (as presets and saved configs name it)."""
  _load()
  if name not in _BY_NAME:
    raise unknown(name, _BY_NAME, "model family")
  return _BY_NAME[name]


def family_of(config_or_model: Any) -> Family:
  """The family of a config, a model (``model.config``) or a config class."""
  _load()
  config = getattr(config_or_model, "config", config_or_model)
  cls = config if isinstance(config, type) else type(config)
  if cls not in _BY_CONFIG:
    raise ValueError(
        f"{cls.__name__} is not a zoo model config; zoo models are built from "
        f"{', '.join(c.__name__ for c in _BY_CONFIG)}."
    )
  return _BY_CONFIG[cls]


def build(config: Any):
  """``model_cls(config)`` of the config's family."""
  return family_of(config).model_cls(config)


# ----------------------------------------------------------------------------------------------
# Capabilities.

_CAPABILITIES = {  # Family field -> (verb, what it is)
    "causal_lm": ("decodes", "causal language model interface (registry.CausalLM)"),
    "seq2seq": ("decodes", "encoder-decoder interface (registry.Seq2Seq)"),
    "text_encoder": ("reads", "text encoder interface (registry.TextEncoder)"),
}


def capable(capability: str) -> list[str]:
  """The names of the registered families that offer ``capability`` (a :class:`Family` field:
  ``"causal_lm"``, ``"seq2seq"``, ``"text_encoder"``), in registration order."""
  return [f.name for f in families() if getattr(f, capability) is not None]


def _capability(model_or_config: Any, capability: str, use: str):
  """The family's ``capability`` record, or one ValueError naming the model, ``use`` and the
  families that offer it."""
  try:
    family = family_of(model_or_config)
  except (TypeError, ValueError):
    family = None
  found = None if family is None else getattr(family, capability)
  if found is not None:
    return found
  verb, what = _CAPABILITIES[capability]
  offering = " or ".join(capable(capability)) or "no registered"
  got = model_or_config if isinstance(model_or_config, type) else type(model_or_config)
  message = (
      f"{use} {verb} {offering} models; got {got.__name__}"
      + (f" (family {family.name!r})" if family else "") + f", which has no {what}."
  )
  if capability in ("causal_lm", "seq2seq"):  # say what decodes what
    neither = [f.name for f in families() if f.causal_lm is None and f.seq2seq is None]
    hints = [
        f"Causal LMs ({', '.join(capable('causal_lm'))}): zoo.generate.generate",
        f"encoder-decoders ({', '.join(capable('seq2seq'))}): zoo.generate.translate_ids",
    ] + ([f"{', '.join(neither)} do not generate text"] if neither else [])
    message += " " + "; ".join(hints) + "."
  raise ValueError(message)


def causal_lm(model_or_config: Any, use: str) -> CausalLM:
  """The :class:`CausalLM` of a model's (or config's) family.

  Args:
    model_or_config: a zoo model, its config, or a config class.
    use: what asks (``"generate"``), for the error message.

  Raises:
    ValueError: the family offers none; the message names the families that do.
  """
  return _capability(model_or_config, "causal_lm", use)


def seq2seq(model_or_config: Any, use: str) -> Seq2Seq:
  """The :class:`Seq2Seq` of a model's (or config's) family.

  Args:
    model_or_config: a zoo model, its config, or a config class.
    use: what asks (``"translate_ids"``), for the error message.

  Raises:
    ValueError: the family offers none; the message names the families that do.
  """
  return _capability(model_or_config, "seq2seq", use)


def text_encoder(model_or_config: Any, use: str) -> TextEncoder:
  """The :class:`TextEncoder` of a model's (or config's) family (a ValueError naming the
  families that offer one when it has none)."""
  return _capability(model_or_config, "text_encoder", use)


def converter_modules(family: Family | None = None) -> list[types.ModuleType]:
  """The ``zoo.pretrained`` converter modules of ``family`` (default: of every family), imported."""
  chosen = families() if family is None else [family]
  return [importlib.import_module(m) for f in chosen for m in f.converters]


# ----------------------------------------------------------------------------------------------
# Config fields and JSON.


def field_names(config_cls: type) -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(config_cls))


def is_dtype_field(name: str) -> bool:
  return name == "dtype" or name.endswith("_dtype")


DTYPES = ("float32", "bfloat16", "float16", "float64")


def dtype_from_name(name: Any, where: str) -> Any:
  """``"bfloat16"`` -> ``jnp.bfloat16`` (dtypes pass through); a clear error otherwise."""
  if isinstance(name, str) and name not in DTYPES:
    raise ValueError(f"{where}={name!r} is not a dtype zoo computes in; choose one of {DTYPES}.")
  dtype = jnp.dtype(name)
  if dtype == jnp.float64 and not jax.config.read("jax_enable_x64"):
    # Without x64 JAX makes float64 arrays float32 with only a warning: the run would not be
    # what the config says.
    raise ValueError(
        f"{where}=float64 but JAX's 64-bit mode is off, so every array would silently be "
        "float32. Set JAX_ENABLE_X64=1 in the environment (or jax.config.update("
        "'jax_enable_x64', True) before building the model), or use float32."
    )
  return dtype


def config_to_json(config: Any) -> dict[str, Any]:
  """``{"family": name, "config": {field: value}}`` with dtypes by name and tuples as lists."""
  family = family_of(config)
  fields = {}
  for name in field_names(family.config_cls):
    value = getattr(config, name)
    if is_dtype_field(name) and value is not None:
      value = jnp.dtype(value).name
    elif isinstance(value, tuple):
      value = list(value)
    fields[name] = value
  return {"family": family.name, "config": fields}


def config_from_json(data: Mapping[str, Any], where: str = "config", **overrides) -> Any:
  """The config :func:`config_to_json` wrote, with ``overrides`` (config fields) applied."""
  if not isinstance(data, Mapping) or "family" not in data or "config" not in data:
    raise ValueError(f"{where}: expected {{'family': ..., 'config': {{...}}}}; got {data!r:.200}.")
  family = get(data["family"])
  fields = dict(data["config"])
  known = set(field_names(family.config_cls))
  for key in overrides:
    if key not in known:
      raise unknown(key, known, f"{family.config_cls.__name__} field")
  fields = {k: v for k, v in fields.items() if k in known}
  fields.update(overrides)
  return make_config(family, fields, where)


def make_config(family: Family, fields: Mapping[str, Any], where: str) -> Any:
  """``family.config_cls(**fields)``: dtype names resolved, lists as tuples, errors with
  ``where``."""
  values = {}
  for key, value in fields.items():
    if is_dtype_field(key) and value is not None:
      value = dtype_from_name(value, f"{where}.{key}")
    elif isinstance(value, list):
      value = tuple(value)
    values[key] = value
  try:
    return family.config_cls(**values)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{where}: cannot build {family.config_cls.__name__}: {e}") from e


# ----------------------------------------------------------------------------------------------
# Tasks: what a batch means to a model and how it is scored (``zoo/tasks/<name>.py``).

_TASKS: dict[str, type] = {}
# Every module of this package registers its tasks when imported: a new task is a new file.
TASK_PACKAGE = "zoo.tasks"
_tasks_loaded = False


def register_task(task_cls: type) -> type:
  """Add a ``zoo.tasks.Task`` subclass under its ``name`` (called at the bottom of its module;
  usable as a class decorator)."""
  name = getattr(task_cls, "name", None)
  if not isinstance(name, str) or not name:
    raise ValueError(f"{task_cls.__name__} has no `name` (a ClassVar[str]) to be registered by.")
  if name in _TASKS and _TASKS[name] is not task_cls:
    raise ValueError(f"a task named {name!r} is already registered ({_TASKS[name].__name__}).")
  _TASKS[name] = task_cls
  return task_cls


def unregister_task(name: str) -> type:
  """Remove the task ``name`` (tests that register a task of their own undo it)."""
  return _TASKS.pop(name)


def _load_tasks() -> None:
  global _tasks_loaded
  if not _tasks_loaded:
    _tasks_loaded = True
    _import_package(TASK_PACKAGE)


def task_names() -> tuple[str, ...]:
  """The names of every registered task (the modules of ``zoo/tasks`` in file-name order)."""
  _load_tasks()
  return tuple(_TASKS)


def task(name: str, label_smoothing: float = 0.0):
  """The registered task called ``name``, as a ``zoo.tasks.Task`` record.

  Args:
    name: a registered task name (:func:`task_names`).
    label_smoothing: epsilon of the task's cross entropies, in [0, 1).
  """
  _load_tasks()
  if name not in _TASKS:
    raise unknown(name, _TASKS, "task")
  if not isinstance(label_smoothing, (int, float)) or not 0.0 <= label_smoothing < 1.0:
    raise ValueError(
        f"label_smoothing={label_smoothing!r} is not in [0, 1); 0.1 is the usual value, 0 = off."
    )
  return _TASKS[name](label_smoothing=float(label_smoothing))
