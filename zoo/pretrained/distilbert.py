"""Hugging Face DistilBERT (``DistilBertModel``, ``DistilBertFor{MaskedLM,SequenceClassification,
TokenClassification,QuestionAnswering}``) <-> :class:`zoo.models.bert.Bert`.

DistilBERT is BERT without token types (``token_types=False``) and without a pooler, with its
own tensor and config names, LayerNorm eps 1e-12 and ``classifier_head="relu"``
(``pre_classifier`` + ReLU + ``classifier`` on [CLS]). ``sinusoidal_pos_embds=true`` is refused.

=================================================  ==============================================
Hugging Face (``distilbert.`` prefix in heads)      zoo
=================================================  ==============================================
embeddings.word_embeddings / position_embeddings   embeddings/{word,position}_embeddings/embedding
embeddings.LayerNorm                               embeddings/norm
transformer.layer.i.attention.{q,k,v}_lin          encoder/layers_i/attn/{query,key,value}
transformer.layer.i.attention.out_lin              encoder/layers_i/attn/out
transformer.layer.i.sa_layer_norm                  encoder/layers_i/attn_norm
transformer.layer.i.ffn.lin1 / ffn.lin2            encoder/layers_i/mlp/wi / mlp/wo
transformer.layer.i.output_layer_norm              encoder/layers_i/mlp_norm
vocab_transform / vocab_layer_norm                 mlm/transform / mlm/norm
vocab_projector.bias [V]                           mlm/bias (``vocab_projector.weight`` is tied)
pre_classifier / classifier (sequence)             classifier/dense / classifier/out_proj
classifier (token classification)                  classifier
qa_outputs [2, D]                                  qa_outputs [D, 2]
=================================================  ==============================================
"""

from __future__ import annotations

from typing import Any

from zoo.models.bert import BertConfig
from zoo.pretrained import bert
from zoo.pretrained import keymap as km
from zoo.pretrained.converter import Converter

MODEL_TYPE = "distilbert"
PREFIX = "distilbert."
NORM_EPS = 1e-12  # hard-coded in transformers' DistilBERT
_HEADS = {
    "DistilBertModel": "none",
    "DistilBertForMaskedLM": "mlm",
    "DistilBertForSequenceClassification": "sequence_classification",
    "DistilBertForTokenClassification": "token_classification",
    "DistilBertForQuestionAnswering": "question_answering",
}
_ARCH = {head: arch for arch, head in _HEADS.items()}
_LAYER = km.LayerNames(
    attention="attention",
    qkv=("q_lin", "k_lin", "v_lin"),
    out="out_lin",
    attn_norm="sa_layer_norm",
    mlp_in="ffn.lin1",
    mlp_out="ffn.lin2",
    mlp_norm="output_layer_norm",
)


def config_from_hf(hf: dict[str, Any], arch: str, keys=()) -> dict[str, Any]:
  """DistilBERT ``config.json`` -> :class:`BertConfig` fields."""
  if hf.get("sinusoidal_pos_embds"):
    raise ValueError(
        f"sinusoidal_pos_embds={hf['sinusoidal_pos_embds']!r} is not supported (zoo reads "
        "DistilBERT with learned position embeddings, sinusoidal_pos_embds=false)."
    )
  head = _HEADS[arch]
  if head == "mlm" and hf.get("tie_word_embeddings") is False:
    raise ValueError("DistilBERT with an untied vocab_projector (tie_word_embeddings=false) is "
                     "not supported.")
  fields = dict(
      vocab_size=hf["vocab_size"],
      max_len=hf.get("max_position_embeddings", 512),
      token_types=False,
      d_model=hf["dim"],
      num_heads=hf["n_heads"],
      num_layers=hf["n_layers"],
      mlp_dim=hf["hidden_dim"],
      activation=km.activation_from_hf(hf.get("activation", "gelu"), "DistilBERT activation"),
      norm_eps=NORM_EPS,
      dropout_rate=hf.get("dropout", 0.1),
      attention_dropout_rate=hf.get("attention_dropout", 0.1),
      init_std=hf.get("initializer_range", 0.02),
      num_labels=bert._num_labels(hf),
      classifier_dropout=hf.get("seq_classif_dropout", 0.2) if head == "sequence_classification"
      else None,
      head=head,
      pooler=False,
      classifier_head="relu",
      checkpoint_format=MODEL_TYPE,
  )
  if hf.get("pad_token_id") is not None:
    fields["pad_id"] = hf["pad_token_id"]
  return fields


def config_to_hf(cfg) -> dict[str, Any]:
  """:class:`BertConfig` -> DistilBERT ``config.json`` for the class of ``cfg.head``."""
  if cfg.head not in _ARCH:
    raise ValueError(
        f"this BertConfig has no Hugging Face DistilBERT equivalent: head={cfg.head!r} (zoo "
        f"writes {sorted(_ARCH)})."
    )
  arch = _ARCH[cfg.head]
  bert.check_export(cfg, "DistilBERT", arch, False, dict(
      position_ids="index", classifier_head="relu", token_types=False, embedding_size=None,
      norm_eps=NORM_EPS,
  ))
  labels = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
  dropout = cfg.dropout_rate if cfg.classifier_dropout is None else cfg.classifier_dropout
  return {
      "architectures": [arch],
      "model_type": MODEL_TYPE,
      "vocab_size": cfg.vocab_size,
      "max_position_embeddings": cfg.max_len,
      "sinusoidal_pos_embds": False,
      "dim": cfg.d_model,
      "n_heads": cfg.num_heads,
      "n_layers": cfg.num_layers,
      "hidden_dim": cfg.mlp_dim,
      "activation": km.activation_to_hf(cfg.activation, what="DistilBERT activation"),
      "dropout": cfg.dropout_rate,
      "attention_dropout": cfg.attention_dropout_rate,
      "seq_classif_dropout": dropout,
      "qa_dropout": cfg.dropout_rate,
      "initializer_range": cfg.init_std,
      "pad_token_id": cfg.pad_id,
      "id2label": labels,
      "label2id": {v: int(k) for k, v in labels.items()},
      "tie_word_embeddings": True,
  }


def ignore(hf: dict[str, Any], arch: str) -> tuple[str, ...]:
  """Buffers, the tied projector, and an MLM head a task model does not use."""
  patterns = ["*position_ids", "vocab_projector.weight"]
  if arch != "DistilBertForMaskedLM":
    patterns += ["vocab_transform.*", "vocab_layer_norm.*", "vocab_projector.*"]
  return tuple(patterns)


def entries(cfg, arch: str) -> list[km.Entry]:
  """The key map for ``cfg`` (names as ``arch`` saves them)."""
  n, h = cfg.num_heads, cfg.d_model // cfg.num_heads
  p = "" if arch == "DistilBertModel" else PREFIX
  out = [
      km.same(f"{p}embeddings.word_embeddings.weight", "embeddings/word_embeddings/embedding"),
      km.same(f"{p}embeddings.position_embeddings.weight",
              "embeddings/position_embeddings/embedding"),
      *km.norm(f"{p}embeddings.LayerNorm", "embeddings/norm"),
  ]
  for i in range(cfg.num_layers):
    out += km.encoder_layer(_LAYER, f"{p}transformer.layer.{i}.", f"encoder/layers_{i}/", n, h)
  if cfg.head == "mlm":
    out += [
        *km.dense("vocab_transform", "mlm/transform"),
        *km.norm("vocab_layer_norm", "mlm/norm"),
        km.same("vocab_projector.bias", "mlm/bias"),
    ]
  return out + bert.head_entries(cfg, ("pre_classifier", "classifier"))


def implied_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
  """No DistilBERT class has a pooler; question answering has two outputs per token."""
  return bert.implied_pooler(overrides)


def describe(cfg) -> str:
  return (
      f"vocab_size={cfg.vocab_size}, dim={cfg.d_model}, n_heads={cfg.num_heads}, "
      f"hidden_dim={cfg.mlp_dim}, max_position_embeddings={cfg.max_len}"
  )


CONVERTER = Converter(
    module=__name__,
    config_cls=BertConfig,
    model_type=MODEL_TYPE,
    architectures=tuple(_HEADS),  # DistilBertModel first: the class of a bare config
    prefix=PREFIX,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    entries=entries,
    ignore=ignore,
    describe=describe,
    matches=lambda cfg: cfg.checkpoint_format == MODEL_TYPE,
    implied_overrides=implied_overrides,
)
