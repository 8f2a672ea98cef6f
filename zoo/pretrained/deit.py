"""Hugging Face DeiT (``DeiTModel``, ``DeiTForImageClassification``,
``DeiTForImageClassificationWithTeacher``) <-> :class:`zoo.models.vit.ViT` with a distillation
token.

DeiT is ViT's layout (the same tensor names under ``deit.``, see :mod:`zoo.pretrained.vit`)
plus a distillation token after [CLS] (two prefix rows in the position table) and, in the
distilled classifier, a second head on that token whose logits are averaged with the [CLS]
head's:

===============================================  =============================================
Hugging Face (``deit.`` prefix in the classifiers)  zoo (``ViTConfig(distillation_token=True)``)
===============================================  =============================================
embeddings.distillation_token [1, 1, D]          dist_token [1, 1, D]
embeddings.position_embeddings [1, 2+h*w, D]     pos_embedding [1, 2+h*w, D]
(everything else)                                as in :mod:`zoo.pretrained.vit`
classifier [K, D] (DeiTForImageClassification)   head [D, K]
cls_classifier [K, D] (...WithTeacher)           head [D, K]
distillation_classifier [K, D] (...WithTeacher)  head_dist [D, K] (``distillation_head=True``)
===============================================  =============================================

``DeiTModel`` is a zoo ViT with ``num_classes=0`` whose output is Hugging Face's
``pooler_output`` (or the normalised [CLS] state without a pooler). ``DeiTForMaskedImageModeling``
is not converted. Another ``image_size`` resizes the patch rows of the position table and keeps
both prefix rows, as ``interpolate_pos_encoding=True`` does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from zoo.models.vit import ViTConfig
from zoo.pretrained import keymap as km
from zoo.pretrained import vit
from zoo.pretrained.converter import Converter

MODEL_TYPE = "deit"
PREFIX = "deit."
BASE = "DeiTModel"
CLASSIFIER = "DeiTForImageClassification"
TEACHER = "DeiTForImageClassificationWithTeacher"


def matches(cfg) -> bool:
  """``cfg`` has DeiT's distillation token (exported by this converter rather than ViT's)."""
  return cfg.distillation_token


def config_from_hf(hf: dict[str, Any], arch: str, keys=()) -> dict[str, Any]:
  """DeiT ``config.json`` (and the tensor names, for the optional pooler) -> ViTConfig fields."""
  fields = vit.config_from_hf(hf, arch, keys, what="DeiT", base=BASE)
  return {**fields, "distillation_token": True, "distillation_head": arch == TEACHER}


def config_to_hf(cfg) -> dict[str, Any]:
  """:class:`ViTConfig` with ``distillation_token`` -> DeiT ``config.json``."""
  if not cfg.distillation_token:
    raise ValueError(
        "this ViTConfig has no distillation token (distillation_token=False): it is a ViT, "
        "which zoo.pretrained.vit exports."
    )
  out = vit.config_to_hf(dataclasses.replace(cfg, distillation_token=False,
                                             distillation_head=False))
  arch = TEACHER if cfg.distillation_head else CLASSIFIER if cfg.num_classes else BASE
  return {**out, "architectures": [arch], "model_type": MODEL_TYPE,
          "encoder_stride": cfg.patch_size}


def entries(cfg, arch: str) -> list[km.Entry]:
  """The key map for ``cfg`` (names as ``arch`` saves them)."""
  p = "" if arch == BASE else PREFIX
  out = vit.backbone_entries(cfg, p)
  out.append(km.same(f"{p}embeddings.distillation_token", "dist_token"))
  if cfg.distillation_head:
    out += km.dense("cls_classifier", "head") + km.dense("distillation_classifier", "head_dist")
  elif cfg.num_classes:
    out += km.dense("classifier", "head")
  return out


def ignore(hf: dict[str, Any], arch: str) -> tuple[str, ...]:
  return ("*mask_token",) + (("*pooler.dense.*",) if arch != BASE else ())


CONVERTER = Converter(
    module=__name__,
    config_cls=ViTConfig,
    model_type=MODEL_TYPE,
    architectures=(BASE, CLASSIFIER, TEACHER),
    prefix=PREFIX,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    entries=entries,
    ignore=ignore,
    describe=vit.describe,
    head_params=("head", "head_dist", "pre_logits"),
    matches=matches,
    resize=vit.resize,
)
