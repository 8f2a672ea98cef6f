"""The converter interface: what a module that reads and writes one checkpoint format declares.

Each converter module (``gpt2.py``, ``llama.py``, ``bert.py``, ``vit.py``, ``marian.py``) ends
with ``CONVERTER = Converter(module=__name__, ...)``, and a family names the module in
``Family.converters``. :func:`converters` is the one place that imports those modules and
reads their records; everything else reads the record's attributes.

A record is checked when it is made (a missing or mis-typed part is a TypeError naming the
module) and again when it is loaded (a module without a record, or a record of another
family, is a TypeError naming the module and the family).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from zoo import registry
from zoo.pretrained import keymap as km

HFConfig = dict[str, Any]  # a parsed Hugging Face config.json


class _Required:
  """The default of a part every converter must provide (so that its absence names the module)."""

  def __repr__(self) -> str:
    return "<required>"


_REQUIRED: Any = _Required()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Converter:
  """One Hugging Face checkpoint format <-> one zoo family.

  Required:
    module: the converter module's ``__name__`` (messages name it).
    config_cls: the zoo config class (the family) it reads and writes.
    model_type: ``config.json``'s ``model_type`` (of the first architecture).
    architectures: the Hugging Face classes it reads; the first is the default one.
    prefix: the base-model prefix of head-model tensor names (``"transformer."``).
    config_from_hf: ``(hf, arch, tensor_names) -> config fields``; a KeyError names a missing
      ``config.json`` field, a ValueError an unsupported value.
    config_to_hf: ``config -> config.json``; a ValueError names what has no equivalent.
    entries: ``(config, arch) -> key map`` (:class:`zoo.pretrained.keymap.Entry` list).
    ignore: ``(hf, arch) -> name patterns`` of tensors that may be present and unused.
    describe: ``config -> "field=value, ..."``: the config.json fields shapes derive from.

  Optional:
    model_types: ``{architecture: model_type}`` when its architectures have several model
      types (Llama, Mistral, Qwen2); default ``{architectures[0]: model_type}``.
    head_params: top-level parameter names of task heads (created fresh when missing).
    matches: ``config -> bool``: this converter writes ``config`` (else the family's first
      converter does); None claims nothing.
    resize: ``(flat, native_config, config) -> flat`` adapting parameters to fields that may
      differ from the checkpoint's (a ViT's ``image_size``); None resizes nothing.
    implied_overrides: ``overrides -> extra overrides`` they imply (a BERT head implies the
      pooler); None implies nothing.
    prepare: ``store -> store``: a view of the checkpoint's tensors, read before the config
      and the key map see their names, that resolves copies by value (T5's embedding copies
      and an ``lm_head.weight`` equal to ``shared.weight``); None reads the file as it is.
  """

  module: str
  config_cls: type = _REQUIRED
  model_type: str = _REQUIRED
  architectures: tuple[str, ...] = _REQUIRED
  prefix: str = _REQUIRED
  config_from_hf: Callable[[HFConfig, str, Sequence[str]], dict[str, Any]] = _REQUIRED
  config_to_hf: Callable[[Any], HFConfig] = _REQUIRED
  entries: Callable[[Any, str], list[km.Entry]] = _REQUIRED
  ignore: Callable[[HFConfig, str], tuple[str, ...]] = _REQUIRED
  describe: Callable[[Any], str] = _REQUIRED
  model_types: Mapping[str, str] = dataclasses.field(default_factory=dict)
  head_params: tuple[str, ...] = ()
  matches: Callable[[Any], bool] | None = None
  resize: Callable[[dict, Any, Any], dict] | None = None
  implied_overrides: Callable[[dict[str, Any]], dict[str, Any]] | None = None
  prepare: Callable[[Any], Any] | None = None

  def __post_init__(self):
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    missing = [name for name, value in fields.items() if value is _REQUIRED]
    if missing:
      required = [name for name, f in _FIELDS.items() if f.default is _REQUIRED]
      raise TypeError(
          f"{self.module}: its Converter lacks {', '.join(missing)}; every converter provides "
          f"{', '.join(required)} (see zoo.pretrained.converter.Converter)."
      )
    problems = []
    if not (isinstance(self.config_cls, type) and dataclasses.is_dataclass(self.config_cls)):
      problems.append(f"config_cls={self.config_cls!r} is not a config dataclass")
    if isinstance(self.architectures, str) or not self.architectures:
      problems.append(f"architectures={self.architectures!r} is not a non-empty tuple of names")
    for name in ("config_from_hf", "config_to_hf", "entries", "ignore", "describe"):
      if not callable(fields[name]):
        problems.append(f"{name}={fields[name]!r} is not callable")
    for name in ("matches", "resize", "implied_overrides", "prepare"):
      if fields[name] is not None and not callable(fields[name]):
        problems.append(f"{name}={fields[name]!r} is neither callable nor None")
    if problems:
      raise TypeError(f"{self.module}: Converter " + "; ".join(problems) + ".")
    object.__setattr__(self, "architectures", tuple(self.architectures))
    object.__setattr__(self, "head_params", tuple(self.head_params))
    by_arch = dict(self.model_types) or {self.architectures[0]: self.model_type}
    stray = sorted(set(by_arch) - set(self.architectures))
    if stray:
      raise TypeError(
          f"{self.module}: Converter model_types names {stray}, which are not among its "
          f"architectures {list(self.architectures)}."
      )
    object.__setattr__(self, "model_types", types.MappingProxyType(by_arch))

  @property
  def name(self) -> str:
    """The module's short name (``"gpt2"``)."""
    return self.module.rsplit(".", 1)[-1]

  def writes(self, config: Any) -> bool:
    """Whether this converter claims to write ``config`` (:attr:`matches`)."""
    return self.matches is not None and bool(self.matches(config))


_FIELDS = {f.name: f for f in dataclasses.fields(Converter)}


def of_module(module: types.ModuleType, family: registry.Family | None = None) -> Converter:
  """The ``CONVERTER`` record of a converter module, checked (against ``family`` if given)."""
  record = vars(module).get("CONVERTER")
  listed = f" (named in the {family.name!r} family's converters)" if family else ""
  if not isinstance(record, Converter):
    raise TypeError(
        f"{module.__name__}{listed} defines no CONVERTER = zoo.pretrained.converter.Converter("
        f"...) record (it has {type(record).__name__}); end the module with one."
    )
  if record.module != module.__name__:
    raise TypeError(
        f"{module.__name__}: its CONVERTER says module={record.module!r}; pass module=__name__."
    )
  if family is not None and record.config_cls is not family.config_cls:
    raise TypeError(
        f"{module.__name__}{listed} converts {record.config_cls.__name__}, not the family's "
        f"{family.config_cls.__name__}."
    )
  return record


def converters(family: registry.Family | None = None) -> list[Converter]:
  """The converters of ``family`` (default: of every registered family), in declared order."""
  chosen = registry.families() if family is None else [family]
  return [of_module(m, f) for f in chosen for m in registry.converter_modules(f)]
