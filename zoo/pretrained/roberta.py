"""Hugging Face RoBERTa and XLM-RoBERTa (``{Roberta,XLMRoberta}{Model,ForMaskedLM,
ForSequenceClassification,ForTokenClassification,ForQuestionAnswering}``) <->
:class:`zoo.models.bert.Bert`.

Both are BERT with ``position_ids="after_pad"`` (positions counted from ``pad_token_id + 1``
over non-pad tokens), one token type, ``classifier_head="tanh"`` and their own MLM head names;
XLM-R differs only in ``model_type`` (and its SentencePiece tokenizer).

=============================================  ==================================================
Hugging Face (``roberta.`` prefix in heads)     zoo
=============================================  ==================================================
embeddings.*, encoder.layer.i.*, pooler.dense  as BERT (:mod:`zoo.pretrained.bert`); the pooler
                                               only in ``*Model``
lm_head.dense / lm_head.layer_norm             mlm/transform / mlm/norm
lm_head.bias [V]                               mlm/bias (``lm_head.decoder`` is tied: not stored)
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

PREFIX = "roberta."
_KINDS = {
    "Model": "none",
    "ForMaskedLM": "mlm",
    "ForSequenceClassification": "sequence_classification",
    "ForTokenClassification": "token_classification",
    "ForQuestionAnswering": "question_answering",
}
_NAMES = {"roberta": "Roberta", "xlm-roberta": "XLMRoberta"}  # model_type -> class prefix
_HEADS = {f"{cls}{kind}": head for cls in _NAMES.values() for kind, head in _KINDS.items()}
MODEL_TYPES = {
    f"{cls}{kind}": model_type for model_type, cls in _NAMES.items() for kind in _KINDS
}


def config_from_hf(hf: dict[str, Any], arch: str, keys=()) -> dict[str, Any]:
  """RoBERTa / XLM-R ``config.json`` -> :class:`BertConfig` fields."""
  model_type = hf.get("model_type", MODEL_TYPES[arch])
  if model_type not in _NAMES:  # e.g. roberta-prelayernorm saved under a RoBERTa class
    raise ValueError(
        f"model_type={model_type!r} is not supported for {arch} (zoo reads {sorted(_NAMES)}; "
        "RoBERTa-PreLayerNorm normalises before each sublayer, which these classes do not)."
    )
  head = _HEADS[arch]
  fields = bert.encoder_fields(hf, "RoBERTa", mlm=head == "mlm")
  if head == "mlm" and fields["activation"] != "gelu":  # lm_head applies gelu whatever it is
    raise ValueError(
        f"{arch} with hidden_act={hf.get('hidden_act')!r} is not supported: its lm_head uses the "
        "exact GELU while zoo's MLM head uses hidden_act; only 'gelu' reads exactly."
    )
  return {
      **fields,
      "type_vocab_size": hf.get("type_vocab_size", 1),
      "pad_id": hf.get("pad_token_id", 1),
      "norm_eps": hf.get("layer_norm_eps", 1e-5),
      "head": head,
      "pooler": head == "none",
      "position_ids": "after_pad",
      "classifier_head": "tanh",
      "checkpoint_format": MODEL_TYPES[arch],
  }


def config_to_hf(cfg) -> dict[str, Any]:
  """:class:`BertConfig` -> RoBERTa / XLM-R ``config.json`` for the class of ``cfg.head``."""
  kind = next((k for k, h in _KINDS.items() if h == cfg.head), None)
  if kind is None or cfg.checkpoint_format not in _NAMES:
    raise ValueError(
        f"this BertConfig has no Hugging Face RoBERTa equivalent: head={cfg.head!r}, "
        f"checkpoint_format={cfg.checkpoint_format!r}."
    )
  arch = _NAMES[cfg.checkpoint_format] + kind
  bert.check_export(cfg, "RoBERTa", arch, cfg.head == "none", dict(
      position_ids="after_pad", classifier_head="tanh", token_types=True, embedding_size=None,
  ))
  return {
      "architectures": [arch], "model_type": cfg.checkpoint_format, **bert.encoder_to_hf(cfg),
      "bos_token_id": 0, "eos_token_id": 2,
  }


def ignore(hf: dict[str, Any], arch: str) -> tuple[str, ...]:
  """Buffers, the tied decoder, and a pooler or LM head this class does not have."""
  patterns = ["*position_ids", "lm_head.decoder.*"]
  if _HEADS[arch] != "none":
    patterns.append("*pooler.dense.*")
  if _HEADS[arch] != "mlm":
    patterns.append("lm_head.*")  # a masked-LM checkpoint fine-tuned into a task model
  return tuple(patterns)


def entries(cfg, arch: str) -> list[km.Entry]:
  """The key map for ``cfg`` (names as ``arch`` saves them)."""
  out = bert.encoder_entries(cfg, "" if _HEADS[arch] == "none" else PREFIX)
  if cfg.head == "mlm":
    out += [
        *km.dense("lm_head.dense", "mlm/transform"),
        *km.norm("lm_head.layer_norm", "mlm/norm"),
        km.same("lm_head.bias", "mlm/bias"),
    ]
  return out + bert.head_entries(cfg, ("classifier.dense", "classifier.out_proj"))


def implied_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
  """Only ``*Model`` has a pooler; question answering has two outputs per token."""
  return bert.implied_pooler(overrides, ("none",))


CONVERTER = Converter(
    module=__name__,
    config_cls=BertConfig,
    model_type="roberta",
    architectures=tuple(_HEADS),  # RobertaModel first: the class of a bare config
    model_types=MODEL_TYPES,
    prefix=PREFIX,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    entries=entries,
    ignore=ignore,
    describe=bert.describe,
    matches=lambda cfg: cfg.checkpoint_format in _NAMES,
    implied_overrides=implied_overrides,
)
