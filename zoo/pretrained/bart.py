"""Hugging Face BART / mBART <-> :class:`zoo.models.transformer.Transformer`.

BART (``BartForConditionalGeneration``, ``BartForSequenceClassification``) is the post-LN
encoder-decoder with learned positions offset by 2, a LayerNorm after the embeddings
(``layernorm_embedding``), GELU, unscaled embeddings, a tied head and a final-logits bias.
mBART (``MBartForConditionalGeneration``, ``MBartForSequenceClassification``) is the same
with pre-LN blocks, a final LayerNorm per stack and embeddings scaled by sqrt(D); its decoder
inputs wrap each row's last token (the language code) to the front (``label_shift``).

==========================================  ============================================
Hugging Face (``model.`` prefix)            zoo
==========================================  ============================================
model.shared.weight [V, D]                  shared/embedding [V, D]
model.{encoder,decoder}.embed_tokens        encoder_embed / decoder_embed (untied only)
model.{enc,dec}oder.embed_positions [P+2,D] {enc,dec}oder_positions/embedding
model.{enc,dec}oder.layernorm_embedding     {enc,dec}oder_embedding_norm
model.encoder.layers.i.self_attn.q/k/v/out  encoder/layers_i/attn/{query,key,value,out}
model.encoder.layers.i.self_attn_layer_norm encoder/layers_i/attn_norm
model.encoder.layers.i.fc1 / fc2            encoder/layers_i/mlp/wi / wo
model.encoder.layers.i.final_layer_norm     encoder/layers_i/mlp_norm
model.decoder.layers.i.encoder_attn...      decoder/layers_i/cross_attn, cross_norm
model.{enc,dec}oder.layer_norm (mBART)      {enc,dec}oder_norm
final_logits_bias [1, V]                    final_logits_bias [V]
lm_head.weight [V, D] (untied only)         lm_head/kernel [D, V]
classification_head.dense / out_proj        classification_head/dense / out_proj
==========================================  ============================================

fairseq's switches that transformers ignores (the class fixes them) are checked against the
class: ``normalize_before`` and ``add_final_layer_norm`` (true for mBART, false for BART),
``normalize_embedding`` (true); a mismatch is a ValueError naming the field and value.
"""

from __future__ import annotations

from typing import Any

from zoo.models.transformer import TransformerConfig
from zoo.pretrained import keymap as km
from zoo.pretrained import marian
from zoo.pretrained.converter import Converter

MODEL_TYPE = "bart"
MODEL_TYPES = {
    "BartForConditionalGeneration": "bart",
    "BartForSequenceClassification": "bart",
    "MBartForConditionalGeneration": "mbart",
    "MBartForSequenceClassification": "mbart",
}
CLASSIFIERS = ("BartForSequenceClassification", "MBartForSequenceClassification")
PREFIX = "model."
OFFSET = 2  # BartLearnedPositionalEmbedding's
HEAD_PARAMS = ("classification_head", "final_logits_bias")  # fresh when a head changes


def _check_layout(hf: dict[str, Any], mbart: bool) -> None:
  """fairseq's layout switches must be the class's; per-stack sizes must agree."""
  name = "mBART" if mbart else "BART"
  for field, want in (("normalize_before", mbart), ("add_final_layer_norm", mbart),
                      ("normalize_embedding", True)):
    if field in hf and bool(hf[field]) != want:
      raise ValueError(
          f"config.json {field}={hf[field]!r}: {name} ({hf.get('model_type')!r}) has "
          f"{field}={want}, and a checkpoint with {field}={hf[field]!r} computes another "
          "function that zoo does not implement."
      )
  for a, b in (("encoder_attention_heads", "decoder_attention_heads"),
               ("encoder_ffn_dim", "decoder_ffn_dim")):
    if hf.get(a) != hf.get(b):
      raise ValueError(f"config.json {a}={hf.get(a)} differs from {b}={hf.get(b)}; zoo's "
                       "Transformer uses one value for both stacks.")


def _num_labels(hf: dict[str, Any]) -> int:
  if hf.get("id2label"):
    return len(hf["id2label"])
  return int(hf.get("num_labels", 3))  # BartConfig's default


def _token(value) -> int:
  """A config.json token id (or a list of them: the first; None: -1, zoo's none)."""
  if isinstance(value, (list, tuple)):
    value = value[0] if value else None
  return -1 if value is None else int(value)


def config_from_hf(hf: dict[str, Any], arch: str, keys=()) -> dict[str, Any]:
  """BART / mBART ``config.json`` -> :class:`TransformerConfig` fields."""
  mbart = MODEL_TYPES[arch] == "mbart"
  _check_layout(hf, mbart)
  activation = km.activation_from_hf(hf.get("activation_function", "gelu"),
                                     "config.json activation_function")
  classify = arch in CLASSIFIERS
  tie = bool(hf.get("tie_word_embeddings", True))
  pad = hf.get("pad_token_id", 1)
  fields = dict(
      vocab_size=hf["vocab_size"],
      d_model=hf["d_model"],
      num_heads=hf["encoder_attention_heads"],
      num_encoder_layers=hf["encoder_layers"],
      num_decoder_layers=hf["decoder_layers"],
      mlp_dim=hf["encoder_ffn_dim"],
      max_len=hf.get("max_position_embeddings", 1024) + OFFSET,
      pad_id=1 if pad is None else pad,
      position="learned",
      position_offset=OFFSET,
      share_embeddings=tie or classify,
      tie_output=tie or classify,
      scale_embeddings=bool(hf.get("scale_embedding", False)),
      final_logits_bias=not classify,
      norm_position="pre" if mbart else "post",
      embedding_norm=True,
      activation=activation,
      norm_eps=1e-5,  # torch.nn.LayerNorm's default, which BART uses
      dropout_rate=hf.get("dropout", 0.1),
      attention_dropout_rate=hf.get("attention_dropout", 0.0),
      mlp_dropout_rate=hf.get("activation_dropout", 0.0),
      init_std=hf.get("init_std", 0.02),
      head="sequence_classification" if classify else "lm",
      num_labels=_num_labels(hf) if classify else 2,
      classifier_dropout_rate=float(hf.get("classifier_dropout") or 0.0),
      eos_id=_token(hf.get("eos_token_id", 2)),
      decoder_start_id=_token(hf.get("decoder_start_token_id", None if mbart else 2)),
      label_shift="wrap_last" if mbart else "start_token",
  )
  return fields


def _problems(cfg) -> list[str]:
  problems = []
  if cfg.position != "learned" or cfg.position_offset != OFFSET:
    problems.append(f"position={cfg.position!r}, position_offset={cfg.position_offset} (BART: "
                    f"'learned', {OFFSET})")
  if not cfg.embedding_norm or cfg.norm != "layernorm":
    problems.append("embedding_norm=False or RMSNorm (BART: LayerNorm, embedding_norm=True)")
  if not cfg.use_bias or cfg.num_kv_heads not in (None, cfg.num_heads):
    problems.append("use_bias=False or grouped-query attention")
  if cfg.head_dim not in (None, cfg.d_model // cfg.num_heads):
    problems.append(f"head_dim={cfg.head_dim} != d_model / num_heads")
  if abs(cfg.norm_eps - 1e-5) > 1e-12:
    problems.append(f"norm_eps={cfg.norm_eps} (BART's LayerNorm eps is 1e-5)")
  if cfg.head == "lm" and not cfg.final_logits_bias:
    problems.append("final_logits_bias=False (BART's LM head has one)")
  if cfg.share_embeddings != cfg.tie_output:
    problems.append(f"share_embeddings={cfg.share_embeddings} with tie_output={cfg.tie_output} "
                    "(transformers ties both or neither)")
  if cfg.tgt_vocab != cfg.src_vocab:
    problems.append("different source and target vocabularies")
  return problems


def architecture(cfg) -> str:
  """The Hugging Face class ``cfg`` exports as."""
  base = "MBart" if cfg.norm_position == "pre" else "Bart"
  return base + ("ForSequenceClassification" if cfg.head == "sequence_classification"
                 else "ForConditionalGeneration")


def config_to_hf(cfg) -> dict[str, Any]:
  """:class:`TransformerConfig` -> BART / mBART ``config.json``."""
  problems = _problems(cfg)
  if problems:
    raise ValueError("this TransformerConfig has no BART equivalent: " + "; ".join(problems) + ".")
  mbart = cfg.norm_position == "pre"
  out = {
      "architectures": [architecture(cfg)],
      "model_type": "mbart" if mbart else "bart",
      "vocab_size": cfg.src_vocab,
      "d_model": cfg.d_model,
      "encoder_layers": cfg.num_encoder_layers,
      "decoder_layers": cfg.num_decoder_layers,
      "encoder_attention_heads": cfg.num_heads,
      "decoder_attention_heads": cfg.num_heads,
      "encoder_ffn_dim": cfg.mlp_dim,
      "decoder_ffn_dim": cfg.mlp_dim,
      "max_position_embeddings": cfg.max_len - OFFSET,
      "activation_function": km.activation_to_hf(cfg.activation, {}, "BART activation"),
      "dropout": cfg.dropout_rate,
      "attention_dropout": cfg.attention_dropout_rate,
      "activation_dropout": cfg.mlp_dropout_rate,
      "classifier_dropout": cfg.classifier_dropout_rate,
      "init_std": cfg.init_std if cfg.init_std is not None else 0.02,
      "scale_embedding": cfg.scale_embeddings,
      "tie_word_embeddings": cfg.tie_output,
      "normalize_before": mbart,
      "add_final_layer_norm": mbart,
      "normalize_embedding": True,
      "pad_token_id": cfg.pad_id,
      "is_encoder_decoder": True,
  }
  if cfg.eos_id >= 0:
    out["eos_token_id"] = cfg.eos_id
  if cfg.decoder_start_id >= 0:
    out["decoder_start_token_id"] = cfg.decoder_start_id
  if cfg.head == "sequence_classification":
    out["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
    out["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
  return out


def ignore(hf: dict[str, Any], arch: str) -> tuple[str, ...]:
  """Tied copies of the token table; an unused ``model.shared`` when untied."""
  tie = bool(hf.get("tie_word_embeddings", True)) or arch in CLASSIFIERS
  if tie:
    return ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
            "lm_head.weight")
  return ("model.shared.weight",)


def entries(cfg, arch: str) -> list[km.Entry]:
  """The key map for ``cfg``."""
  out = marian.embedding_entries(cfg)
  for side, count in marian.stacks(cfg):
    p = f"model.{side}."
    out += [km.same(f"{p}embed_positions.weight", f"{side}_positions/embedding"),
            *km.norm(f"{p}layernorm_embedding", f"{side}_embedding_norm")]
    for i in range(count):
      out += marian.layer_entries(cfg, side, i)
    if cfg.norm_position == "pre":
      out += km.norm(f"{p}layer_norm", f"{side}_norm")
  if cfg.head == "sequence_classification":
    return out + [*km.dense("classification_head.dense", "classification_head/dense"),
                  *km.dense("classification_head.out_proj", "classification_head/out_proj")]
  return out + marian.output_entries(cfg)


def describe(cfg) -> str:
  return (
      f"vocab_size={cfg.src_vocab}, d_model={cfg.d_model}, attention_heads={cfg.num_heads}, "
      f"ffn_dim={cfg.mlp_dim}, max_position_embeddings={cfg.max_len - OFFSET}"
  )


def matches(cfg) -> bool:
  """BART's layout: learned positions offset by 2 and an embedding LayerNorm."""
  return cfg.position == "learned" and cfg.position_offset == OFFSET and cfg.embedding_norm


CONVERTER = Converter(
    module=__name__,
    config_cls=TransformerConfig,
    model_type=MODEL_TYPE,
    architectures=tuple(MODEL_TYPES),
    prefix=PREFIX,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    entries=entries,
    ignore=ignore,
    describe=describe,
    model_types=MODEL_TYPES,
    head_params=HEAD_PARAMS,
    matches=matches,
)
