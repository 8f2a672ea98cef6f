"""Hugging Face BERT (``BertModel``, ``BertFor{PreTraining,MaskedLM,SequenceClassification,
TokenClassification,QuestionAnswering}``) <-> :class:`zoo.models.bert.Bert`.

=============================================  ==================================================
Hugging Face (``bert.`` prefix in head models)  zoo
=============================================  ==================================================
embeddings.word_embeddings.weight [V, D]       embeddings/word_embeddings/embedding
embeddings.position_embeddings.weight [P, D]   embeddings/position_embeddings/embedding
embeddings.token_type_embeddings.weight        embeddings/token_type_embeddings/embedding
embeddings.LayerNorm.{weight,bias}             embeddings/norm/{scale,bias}
encoder.layer.i.attention.self.q/k/v [N*H, D]  encoder/layers_i/attn/{query,key,value}/kernel
                                               [D, N, H] (transpose, split heads); bias [N, H]
encoder.layer.i.attention.output.dense         encoder/layers_i/attn/out/kernel [N, H, D]
encoder.layer.i.attention.output.LayerNorm     encoder/layers_i/attn_norm
encoder.layer.i.intermediate.dense [F, D]      encoder/layers_i/mlp/wi/kernel [D, F]
encoder.layer.i.output.dense [D, F]            encoder/layers_i/mlp/wo/kernel [F, D]
encoder.layer.i.output.LayerNorm               encoder/layers_i/mlp_norm
pooler.dense                                   pooler (not in MaskedLM / TokenClassification /
                                               QuestionAnswering)
cls.predictions.transform.dense                mlm/transform
cls.predictions.transform.LayerNorm            mlm/norm
cls.predictions.bias [V]                       mlm/bias (decoder.weight is tied: not stored)
cls.seq_relationship [2, D]                    nsp [D, 2]
classifier [C, D]                              classifier [D, C]
qa_outputs [2, D]                              qa_outputs [D, 2] (start = [..., 0], end = 1)
=============================================  ==================================================
"""

from __future__ import annotations

from typing import Any

from zoo.models.bert import BertConfig
from zoo.pretrained import keymap as km
from zoo.pretrained.converter import Converter

MODEL_TYPE = "bert"
PREFIX = "bert."

_HEADS = {
    "BertModel": "none",
    "BertForPreTraining": "pretraining",
    "BertForMaskedLM": "mlm",
    "BertForSequenceClassification": "sequence_classification",
    "BertForTokenClassification": "token_classification",
    "BertForQuestionAnswering": "question_answering",
}
_ARCH = {head: arch for arch, head in _HEADS.items()}
# add_pooling_layer=False
_NO_POOLER = ("BertForMaskedLM", "BertForTokenClassification", "BertForQuestionAnswering")
_LAYER = km.LayerNames(
    attention="attention",
    qkv=("self.query", "self.key", "self.value"),
    out="output.dense",
    attn_norm="attention.output.LayerNorm",
    mlp_in="intermediate.dense",
    mlp_out="output.dense",
    mlp_norm="output.LayerNorm",
)


def implied_pooler(
    overrides: dict[str, Any], pooled_heads: tuple[str, ...] = ()
) -> dict[str, Any]:
  """The pooler (and labels) a requested head implies, as transformers builds that head's class.

  The heads in ``pooled_heads`` come with a pooler (fresh if the checkpoint has none), the
  others without (a checkpoint's is dropped); a format with no pooled head (DistilBERT,
  ELECTRA) never has one. Question answering has two outputs per token whatever the
  checkpoint's ``num_labels`` (a 9-label classifier can be fine-tuned into a span head).
  """
  out = {}
  if "pooler" not in overrides and ("head" in overrides or not pooled_heads):
    out["pooler"] = overrides.get("head") in pooled_heads
  if overrides.get("head") == "question_answering" and "num_labels" not in overrides:
    out["num_labels"] = 2
  return out


def implied_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
  """BERT's pooled heads: pretraining (NSP), sequence classification and the bare model."""
  return implied_pooler(overrides, ("pretraining", "sequence_classification", "none"))


def head_entries(cfg, classifier: tuple[str, ...] = ("classifier",)) -> list[km.Entry]:
  """The classification, tagging and span heads, named alike by the BERT-like formats.

  ``classifier``: the sequence classifier's one dense layer (BERT, on the pooler) or two
  (RoBERTa's and ELECTRA's ``classifier.dense`` + ``classifier.out_proj``, DistilBERT's
  ``pre_classifier`` + ``classifier``).
  """
  out = []
  if cfg.head == "sequence_classification":
    if len(classifier) == 1:
      out += km.dense(classifier[0], "classifier")
    else:
      out += km.dense(classifier[0], "classifier/dense")
      out += km.dense(classifier[1], "classifier/out_proj")
  if cfg.head == "token_classification":
    out += km.dense("classifier", "classifier")
  if cfg.head == "question_answering":
    out += km.dense("qa_outputs", "qa_outputs")
  return out


def _num_labels(hf: dict[str, Any]) -> int:
  if hf.get("id2label"):
    return len(hf["id2label"])
  return hf.get("num_labels", 2)


def config_from_hf(hf: dict[str, Any], arch: str, keys=()) -> dict[str, Any]:
  """BERT ``config.json`` -> :class:`BertConfig` fields."""
  return {
      **encoder_fields(hf, "BERT", mlm=arch in ("BertForPreTraining", "BertForMaskedLM")),
      "head": _HEADS[arch],
      "pooler": arch not in _NO_POOLER,
  }


def encoder_fields(hf: dict[str, Any], what: str, *, mlm: bool) -> dict[str, Any]:
  """The :class:`BertConfig` fields of a ``config.json`` in BERT's names (BERT, RoBERTa, XLM-R,
  ELECTRA), with the variants zoo does not implement refused by field and value."""
  activation = km.activation_from_hf(hf.get("hidden_act", "gelu"), f"{what} hidden_act")
  pos = hf.get("position_embedding_type", "absolute")
  if pos != "absolute":
    raise ValueError(
        f"{what} position_embedding_type={pos!r} is not supported (only 'absolute')."
    )
  if mlm and hf.get("tie_word_embeddings") is False:
    raise ValueError(
        f"{what} with an untied MLM decoder (tie_word_embeddings=false) is not supported."
    )
  if hf.get("is_decoder") or hf.get("add_cross_attention"):
    raise ValueError(
        f"{what} as a decoder (is_decoder / add_cross_attention) is not supported."
    )
  fields = dict(
      vocab_size=hf["vocab_size"],
      max_len=hf.get("max_position_embeddings", 512),
      type_vocab_size=hf.get("type_vocab_size", 2),
      d_model=hf["hidden_size"],
      num_heads=hf["num_attention_heads"],
      num_layers=hf["num_hidden_layers"],
      mlp_dim=hf["intermediate_size"],
      activation=activation,
      norm_eps=hf.get("layer_norm_eps", 1e-12),
      dropout_rate=hf.get("hidden_dropout_prob", 0.1),
      attention_dropout_rate=hf.get("attention_probs_dropout_prob", 0.1),
      init_std=hf.get("initializer_range", 0.02),
      num_labels=_num_labels(hf),
      classifier_dropout=hf.get("classifier_dropout"),
  )
  pad = hf.get("pad_token_id")
  if pad is not None:
    fields["pad_id"] = pad
  return fields


def config_to_hf(cfg) -> dict[str, Any]:
  """:class:`BertConfig` -> BERT ``config.json`` for the class matching ``cfg.head``."""
  if cfg.head not in _ARCH:
    raise ValueError(f"this BertConfig has no Hugging Face BERT equivalent: head={cfg.head!r}.")
  arch = _ARCH[cfg.head]
  check_export(cfg, "BERT", arch, arch not in _NO_POOLER, dict(
      position_ids="index", classifier_head="linear", token_types=True, embedding_size=None,
  ))
  return {"architectures": [arch], "model_type": MODEL_TYPE, **encoder_to_hf(cfg)}


def check_export(cfg, what: str, arch: str, pooler: bool, fields: dict[str, Any]) -> None:
  """A ValueError naming every field of ``cfg`` that ``arch`` (of ``what``) cannot hold:
  ``fields`` are the values the format requires; BERT's post-LN, learned positions, and the
  pooler the class has (``pooler``) are always required."""
  problems = []
  if cfg.position != "learned":
    problems.append(f"position={cfg.position!r} ({what} has a learned position table)")
  if cfg.norm_position != "post":
    problems.append(f"norm_position={cfg.norm_position!r} ({what} is post-LN)")
  if cfg.pooler != pooler:
    problems.append(f"pooler={cfg.pooler} ({arch} {'needs one' if pooler else 'has none'})")
  problems += [
      f"{k}={getattr(cfg, k)!r} ({what} has {v!r})" for k, v in fields.items()
      if getattr(cfg, k) != v
  ]
  if problems:
    raise ValueError(
        f"this BertConfig has no Hugging Face {what} equivalent: " + "; ".join(problems) + "."
    )


def encoder_to_hf(cfg) -> dict[str, Any]:
  """The ``config.json`` fields in BERT's names (BERT, RoBERTa, XLM-R, ELECTRA)."""
  labels = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
  return {
      "vocab_size": cfg.vocab_size,
      "max_position_embeddings": cfg.max_len,
      "type_vocab_size": cfg.type_vocab_size,
      "hidden_size": cfg.d_model,
      "num_attention_heads": cfg.num_heads,
      "num_hidden_layers": cfg.num_layers,
      "intermediate_size": cfg.mlp_dim,
      "hidden_act": km.activation_to_hf(cfg.activation, what="BERT activation"),
      "layer_norm_eps": cfg.norm_eps,
      "hidden_dropout_prob": cfg.dropout_rate,
      "attention_probs_dropout_prob": cfg.attention_dropout_rate,
      "initializer_range": cfg.init_std,
      "classifier_dropout": cfg.classifier_dropout,
      "pad_token_id": cfg.pad_id,
      "position_embedding_type": "absolute",
      "id2label": labels,
      "label2id": {v: int(k) for k, v in labels.items()},
      "tie_word_embeddings": True,
  }


def ignore(hf: dict[str, Any], arch: str) -> tuple[str, ...]:
  """Buffers, the tied MLM decoder, and heads / pooler this architecture does not have."""
  patterns = ["*position_ids", "cls.predictions.decoder.*"]
  if arch in _NO_POOLER:
    patterns.append("*pooler.dense.*")
  if arch not in ("BertForPreTraining", "BertForMaskedLM"):
    patterns.append("cls.*")  # a pretraining checkpoint fine-tuned into a task model
  if arch == "BertForMaskedLM":
    patterns.append("cls.seq_relationship.*")
  return tuple(patterns)


def entries(cfg, arch: str) -> list[km.Entry]:
  """The key map for ``cfg`` (names as ``arch`` saves them)."""
  out = encoder_entries(cfg, "" if arch == "BertModel" else PREFIX)
  if cfg.head in ("pretraining", "mlm"):
    out += [
        *km.dense("cls.predictions.transform.dense", "mlm/transform"),
        *km.norm("cls.predictions.transform.LayerNorm", "mlm/norm"),
        km.same("cls.predictions.bias", "mlm/bias"),
    ]
  if cfg.head == "pretraining":
    out += km.dense("cls.seq_relationship", "nsp")
  return out + head_entries(cfg)


def encoder_entries(cfg, p: str) -> list[km.Entry]:
  """Embeddings, layers and pooler in BERT's names under the prefix ``p`` (``"roberta."``)."""
  n, h = cfg.num_heads, cfg.d_model // cfg.num_heads
  e = f"{p}embeddings."
  out = [
      km.same(f"{e}word_embeddings.weight", "embeddings/word_embeddings/embedding"),
      km.same(f"{e}position_embeddings.weight", "embeddings/position_embeddings/embedding"),
      *km.norm(f"{e}LayerNorm", "embeddings/norm"),
  ]
  if cfg.token_types:
    out.append(km.same(f"{e}token_type_embeddings.weight",
                       "embeddings/token_type_embeddings/embedding"))
  if cfg.d_embed != cfg.d_model:
    out += km.dense(f"{p}embeddings_project", "embeddings_project")
  for i in range(cfg.num_layers):
    out += km.encoder_layer(_LAYER, f"{p}encoder.layer.{i}.", f"encoder/layers_{i}/", n, h)
  if cfg.pooler:
    out += km.dense(f"{p}pooler.dense", "pooler")
  return out


def describe(cfg) -> str:
  return (
      f"vocab_size={cfg.vocab_size}, hidden_size={cfg.d_model}, num_attention_heads="
      f"{cfg.num_heads}, intermediate_size={cfg.mlp_dim}, max_position_embeddings={cfg.max_len}"
  )


CONVERTER = Converter(
    module=__name__,
    config_cls=BertConfig,
    model_type=MODEL_TYPE,
    architectures=tuple(_HEADS),  # BertModel first: the class of a bare config
    prefix=PREFIX,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    entries=entries,
    ignore=ignore,
    describe=describe,
    # Fresh when missing (the family's first converter names the heads of every format).
    head_params=("pooler", "mlm", "nsp", "classifier", "qa_outputs", "discriminator_predictions"),
    implied_overrides=implied_overrides,
)
