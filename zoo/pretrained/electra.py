"""Hugging Face ELECTRA discriminators (``ElectraModel``, ``ElectraForPreTraining``,
``ElectraFor{SequenceClassification,TokenClassification,QuestionAnswering}``) <->
:class:`zoo.models.bert.Bert`.

ELECTRA is BERT without a pooler, with embeddings of width ``embedding_size`` projected to
``hidden_size`` by ``embeddings_project`` when the two differ (the small models), the
replaced-token-detection head and ``classifier_head="gelu"``. The generator
(``ElectraForMaskedLM``) is not converted.

=============================================  ==================================================
Hugging Face (``electra.`` prefix in heads)     zoo
=============================================  ==================================================
embeddings.*, encoder.layer.i.*                as BERT (:mod:`zoo.pretrained.bert`), tables [., E]
embeddings_project [D, E]                      embeddings_project [E, D] (E != D only)
discriminator_predictions.dense                discriminator_predictions/dense
discriminator_predictions.dense_prediction     discriminator_predictions/dense_prediction [D, 1]
classifier.dense / classifier.out_proj         classifier/dense / classifier/out_proj (sequence)
classifier [C, D]                              classifier [D, C] (token classification)
qa_outputs [2, D]                              qa_outputs [D, 2]
=============================================  ==================================================
"""

from __future__ import annotations

from typing import Any

from zoo.models.bert import BertConfig
from zoo.pretrained import bert
from zoo.pretrained import keymap as km
from zoo.pretrained.converter import Converter

MODEL_TYPE = "electra"
PREFIX = "electra."
_HEADS = {
    "ElectraModel": "none",
    "ElectraForPreTraining": "replaced_token_detection",
    "ElectraForSequenceClassification": "sequence_classification",
    "ElectraForTokenClassification": "token_classification",
    "ElectraForQuestionAnswering": "question_answering",
}
_ARCH = {head: arch for arch, head in _HEADS.items()}


def config_from_hf(hf: dict[str, Any], arch: str, keys=()) -> dict[str, Any]:
  """ELECTRA ``config.json`` -> :class:`BertConfig` fields."""
  fields = bert.encoder_fields(hf, "ELECTRA", mlm=False)
  size = hf.get("embedding_size", 128)
  return {
      **fields,
      "embedding_size": None if size == fields["d_model"] else size,
      "head": _HEADS[arch],
      "pooler": False,
      "classifier_head": "gelu",
      "checkpoint_format": MODEL_TYPE,
  }


def config_to_hf(cfg) -> dict[str, Any]:
  """:class:`BertConfig` -> ELECTRA ``config.json`` for the class of ``cfg.head``."""
  if cfg.head not in _ARCH:
    raise ValueError(
        f"this BertConfig has no Hugging Face ELECTRA equivalent: head={cfg.head!r} (zoo "
        f"writes {sorted(_ARCH)})."
    )
  arch = _ARCH[cfg.head]
  bert.check_export(cfg, "ELECTRA", arch, False, dict(
      position_ids="index", classifier_head="gelu", token_types=True,
  ))
  return {
      "architectures": [arch], "model_type": MODEL_TYPE, **bert.encoder_to_hf(cfg),
      "embedding_size": cfg.d_embed, "summary_type": "first",
  }


def ignore(hf: dict[str, Any], arch: str) -> tuple[str, ...]:
  """Buffers, and a discriminator head the task model does not use."""
  patterns = ["*position_ids"]
  if arch != "ElectraForPreTraining":
    patterns.append("discriminator_predictions.*")
  return tuple(patterns)


def entries(cfg, arch: str) -> list[km.Entry]:
  """The key map for ``cfg`` (names as ``arch`` saves them)."""
  out = bert.encoder_entries(cfg, "" if arch == "ElectraModel" else PREFIX)
  if cfg.head == "replaced_token_detection":
    out += km.dense("discriminator_predictions.dense", "discriminator_predictions/dense")
    out += km.dense("discriminator_predictions.dense_prediction",
                    "discriminator_predictions/dense_prediction")
  return out + bert.head_entries(cfg, ("classifier.dense", "classifier.out_proj"))


def implied_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
  """No ELECTRA class has a pooler; question answering has two outputs per token."""
  return bert.implied_pooler(overrides)


def describe(cfg) -> str:
  return f"{bert.describe(cfg)}, embedding_size={cfg.d_embed}"


CONVERTER = Converter(
    module=__name__,
    config_cls=BertConfig,
    model_type=MODEL_TYPE,
    architectures=tuple(_HEADS),  # ElectraModel first: the class of a bare config
    prefix=PREFIX,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    entries=entries,
    ignore=ignore,
    describe=describe,
    matches=lambda cfg: cfg.checkpoint_format == MODEL_TYPE,
    implied_overrides=implied_overrides,
)
