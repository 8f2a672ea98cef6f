"""Hugging Face ``MarianMTModel`` (Opus-MT) <-> :class:`zoo.models.transformer.Transformer`.

Marian is the 2017 post-LN encoder-decoder with embeddings scaled by sqrt(D), sinusoidal
positions in the "split" layout (all sines, then all cosines), swish activations, a tied
output projection and a final-logits bias.

==========================================  ============================================
Hugging Face (``model.`` prefix)            zoo
==========================================  ============================================
model.shared.weight [V, D]                  shared/embedding [V, D]
model.{encoder,decoder}.embed_tokens        encoder_embed / decoder_embed (unshared only)
model.encoder.layers.i.self_attn.q/k/v      encoder/layers_i/attn/{query,key,value}
model.encoder.layers.i.self_attn.out_proj   encoder/layers_i/attn/out
model.encoder.layers.i.self_attn_layer_norm encoder/layers_i/attn_norm
model.encoder.layers.i.fc1 / fc2            encoder/layers_i/mlp/wi / wo
model.encoder.layers.i.final_layer_norm     encoder/layers_i/mlp_norm
model.decoder.layers.i.self_attn...         decoder/layers_i/attn, attn_norm
model.decoder.layers.i.encoder_attn...      decoder/layers_i/cross_attn, cross_norm
model.decoder.layers.i.fc1/fc2/final_...    decoder/layers_i/mlp, mlp_norm
final_logits_bias [1, V]                    final_logits_bias [V]
lm_head.weight [V, D] (untied only)         lm_head/kernel [D, V]
==========================================  ============================================

Sinusoidal ``embed_positions`` tables (stored by older checkpoints) have no parameters in
zoo and are ignored.
"""

from __future__ import annotations

from typing import Any

from zoo.models.transformer import TransformerConfig
from zoo.pretrained import keymap as km
from zoo.pretrained.converter import Converter

MODEL_TYPE = "marian"
PREFIX = "model."

# Opus-MT configs call SiLU "swish": exports keep that name.
_ACT_TO_HF = {"silu": "swish"}
_LAYER = km.LayerNames(  # the same names in encoder and decoder layers
    attention="self_attn",
    qkv=("q_proj", "k_proj", "v_proj"),
    out="out_proj",
    attn_norm="self_attn_layer_norm",
    mlp_in="fc1",
    mlp_out="fc2",
    mlp_norm="final_layer_norm",
)


def config_from_hf(hf: dict[str, Any], arch: str, keys=()) -> dict[str, Any]:
  """Marian ``config.json`` -> :class:`TransformerConfig` fields."""
  activation = km.activation_from_hf(
      hf.get("activation_function", "swish"), "Marian activation_function"
  )
  for a, b in (("encoder_attention_heads", "decoder_attention_heads"),
               ("encoder_ffn_dim", "decoder_ffn_dim")):
    if hf.get(a) != hf.get(b):
      raise ValueError(f"Marian {a}={hf.get(a)} differs from {b}={hf.get(b)}; zoo's "
                       "Transformer uses one value for both stacks.")
  if hf.get("normalize_before"):
    raise ValueError("Marian normalize_before=true is not supported.")
  vocab = hf["vocab_size"]
  tgt_vocab = hf.get("decoder_vocab_size") or vocab
  tie = hf.get("tie_word_embeddings", True)
  # transformers ties encoder/decoder embed_tokens to model.shared only when it also ties the
  # output projection: with share_encoder_decoder_embeddings=True but tie_word_embeddings=False
  # the model holds (and uses) separate encoder and decoder tables, and model.shared is unused.
  share = hf.get("share_encoder_decoder_embeddings", True) and tie
  fields = dict(
      vocab_size=vocab,
      tgt_vocab_size=None if tgt_vocab == vocab else tgt_vocab,
      d_model=hf["d_model"],
      num_heads=hf["encoder_attention_heads"],
      num_encoder_layers=hf["encoder_layers"],
      num_decoder_layers=hf["decoder_layers"],
      mlp_dim=hf["encoder_ffn_dim"],
      max_len=hf.get("max_position_embeddings", 512),
      position="sinusoidal",
      sinusoid_layout="split",
      share_embeddings=share,
      tie_output=tie,
      scale_embeddings=hf.get("scale_embedding", False),
      final_logits_bias=True,
      norm_position="post",
      activation=activation,
      norm_eps=1e-5,  # torch.nn.LayerNorm's default, which Marian uses
      dropout_rate=hf.get("dropout", 0.1),
      attention_dropout_rate=hf.get("attention_dropout", 0.0),
      mlp_dropout_rate=hf.get("activation_dropout", 0.0),
      init_std=hf.get("init_std", 0.02),
  )
  if hf.get("pad_token_id") is not None:
    fields["pad_id"] = hf["pad_token_id"]
  return fields


def config_to_hf(cfg) -> dict[str, Any]:
  """:class:`TransformerConfig` -> ``MarianMTModel`` ``config.json``."""
  problems = []
  if cfg.position != "sinusoidal" or cfg.sinusoid_layout != "split" or cfg.position_offset:
    problems.append(
        f"position={cfg.position!r}, sinusoid_layout={cfg.sinusoid_layout!r}, position_offset="
        f"{cfg.position_offset} (Marian: 'sinusoidal', 'split', 0)"
    )
  if cfg.norm_position != "post" or cfg.embedding_norm or cfg.norm != "layernorm":
    problems.append("norm settings (Marian is post-LN LayerNorm without an embedding norm)")
  if not cfg.use_bias or cfg.num_kv_heads not in (None, cfg.num_heads):
    problems.append("use_bias=False or grouped-query attention")
  if cfg.head_dim not in (None, cfg.d_model // cfg.num_heads):
    problems.append(f"head_dim={cfg.head_dim} != d_model / num_heads")
  if abs(cfg.norm_eps - 1e-5) > 1e-12:
    problems.append(f"norm_eps={cfg.norm_eps} (Marian's LayerNorm eps is 1e-5)")
  if problems:
    raise ValueError(
        "this TransformerConfig has no Marian equivalent: " + "; ".join(problems) + "."
    )
  return {
      "architectures": ["MarianMTModel"],
      "model_type": MODEL_TYPE,
      "vocab_size": cfg.src_vocab,
      "decoder_vocab_size": cfg.tgt_vocab,
      "share_encoder_decoder_embeddings": cfg.share_embeddings,
      "tie_word_embeddings": cfg.tie_output,
      "d_model": cfg.d_model,
      "encoder_attention_heads": cfg.num_heads,
      "decoder_attention_heads": cfg.num_heads,
      "encoder_layers": cfg.num_encoder_layers,
      "decoder_layers": cfg.num_decoder_layers,
      "encoder_ffn_dim": cfg.mlp_dim,
      "decoder_ffn_dim": cfg.mlp_dim,
      "max_position_embeddings": cfg.max_len,
      "scale_embedding": cfg.scale_embeddings,
      "activation_function": km.activation_to_hf(cfg.activation, _ACT_TO_HF, "Marian activation"),
      "dropout": cfg.dropout_rate,
      "attention_dropout": cfg.attention_dropout_rate,
      "activation_dropout": cfg.mlp_dropout_rate,
      "init_std": cfg.init_std if cfg.init_std is not None else 0.02,
      "pad_token_id": cfg.pad_id,
      "decoder_start_token_id": cfg.pad_id,  # Marian starts decoding from <pad>
      "is_encoder_decoder": True,
  }


def ignore(hf: dict[str, Any], arch: str) -> tuple[str, ...]:
  """Sinusoid tables, tied copies of the token embedding, and an unused ``model.shared``."""
  patterns = ["*embed_positions.weight"]
  tie = hf.get("tie_word_embeddings", True)
  if hf.get("share_encoder_decoder_embeddings", True) and tie:
    patterns += ["model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight"]
  else:
    patterns.append("model.shared.weight")  # untied: the stacks read their own tables
  if tie:
    patterns.append("lm_head.weight")
  return tuple(patterns)


# The key maps below are shared with BART and mBART (zoo/pretrained/bart.py): transformers'
# Marian classes are BART's with other defaults.


def embedding_entries(cfg) -> list[km.Entry]:
  """The token tables: one shared, or one per side."""
  if cfg.share_embeddings:
    return [km.same("model.shared.weight", "shared/embedding")]
  return [km.same("model.encoder.embed_tokens.weight", "encoder_embed/embedding"),
          km.same("model.decoder.embed_tokens.weight", "decoder_embed/embedding")]


def layer_entries(cfg, side: str, i: int) -> list[km.Entry]:
  """Layer ``i`` of the ``side`` ("encoder" / "decoder") stack, cross-attention included."""
  n, h = cfg.num_heads, cfg.d_model // cfg.num_heads
  s, z = f"model.{side}.layers.{i}.", f"{side}/layers_{i}/"
  out = km.encoder_layer(_LAYER, s, z, n, h)
  if side == "decoder":
    out += [*km.attention(f"{s}encoder_attn", f"{z}cross_attn", n, h, qkv=_LAYER.qkv,
                          out=_LAYER.out),
            *km.norm(f"{s}encoder_attn_layer_norm", f"{z}cross_norm")]
  return out


def output_entries(cfg) -> list[km.Entry]:
  """The final-logits bias and an untied output projection."""
  out = []
  if cfg.final_logits_bias:
    out.append(km.tensor("final_logits_bias", "final_logits_bias",
                         lambda b: b.reshape(-1), lambda b: b.reshape(1, -1)))
  if not cfg.tie_output:
    out.append(km.linear("lm_head.weight", "lm_head/kernel"))
  return out


def stacks(cfg) -> tuple[tuple[str, int], ...]:
  return (("encoder", cfg.num_encoder_layers), ("decoder", cfg.num_decoder_layers))


def entries(cfg, arch: str) -> list[km.Entry]:
  """The key map for ``cfg``."""
  out = embedding_entries(cfg)
  for side, count in stacks(cfg):
    for i in range(count):
      out += layer_entries(cfg, side, i)
  return out + output_entries(cfg)


def describe(cfg) -> str:
  return (
      f"vocab_size={cfg.src_vocab}, decoder_vocab_size={cfg.tgt_vocab}, d_model={cfg.d_model}, "
      f"attention_heads={cfg.num_heads}, ffn_dim={cfg.mlp_dim}"
  )


CONVERTER = Converter(
    module=__name__,
    config_cls=TransformerConfig,
    model_type=MODEL_TYPE,
    architectures=("MarianMTModel",),
    prefix=PREFIX,
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    entries=entries,
    ignore=ignore,
    describe=describe,
    # The family's head parameters are read from its first converter; BART's classifier and
    # the final-logits bias are the Transformer family's task heads.
    head_params=("classification_head", "final_logits_bias"),
)
