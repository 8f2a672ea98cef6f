"""The published size tables, in one place.

Each preset is ``name -> (family name, config fields)``, the family as registered in
``zoo.registry``; the rest of a config comes from the family's dataclass defaults.
``PUBLISHED_PARAMS`` holds the parameter counts the papers report, which
``tests/test_presets.py`` checks ``zoo.param_count`` against.
"""

from __future__ import annotations


def _gpt2(d_model: int, num_layers: int, num_heads: int) -> tuple[str, dict]:
  # Radford et al. 2019: 50257-token byte-level BPE, 1024 context, mlp = 4 * d_model.
  return "gpt", dict(
      vocab_size=50257, max_len=1024, d_model=d_model, num_layers=num_layers,
      num_heads=num_heads, mlp_dim=4 * d_model,
  )


def _gpt3(num_layers: int, d_model: int, num_heads: int, head_dim: int) -> tuple[str, dict]:
  # Brown et al. 2020, Table 2.1: n_layers, d_model, n_heads, d_head; 2048 context.
  return "gpt", dict(
      vocab_size=50257, max_len=2048, d_model=d_model, num_layers=num_layers,
      num_heads=num_heads, head_dim=head_dim, mlp_dim=4 * d_model,
  )


def _llama(
    vocab: int, d_model: int, num_layers: int, num_heads: int, num_kv_heads: int, mlp_dim: int,
    max_len: int, **fields,
) -> tuple[str, dict]:
  # The Llama layout in the GPT family: RoPE, RMSNorm, SwiGLU, no biases, untied head, GQA.
  return "gpt", {
      **dict(
          vocab_size=vocab, d_model=d_model, num_layers=num_layers, num_heads=num_heads,
          num_kv_heads=num_kv_heads, mlp_dim=mlp_dim, max_len=max_len, position="rope",
          norm="rmsnorm", activation="silu", gated_mlp=True, use_bias=False,
          tie_embeddings=False, dropout_rate=0.0, scale_residual_init=False,
      ),
      **fields,
  }


def _gemma(
    vocab: int, d_model: int, num_layers: int, num_heads: int, num_kv_heads: int, mlp_dim: int,
    max_len: int, **fields,
) -> tuple[str, dict]:
  # Gemma (Google 2024): the Llama layout with a GeGLU MLP, RMSNorm scaled by (1 + w),
  # embeddings times sqrt(d_model), head_dim 256 and tied embeddings.
  return _llama(vocab, d_model, num_layers, num_heads, num_kv_heads, mlp_dim, max_len, **{
      **dict(head_dim=256, activation="gelu_tanh", norm_scale_offset=1.0, norm_eps=1e-6,
             scale_embeddings=True, tie_embeddings=True),
      **fields,
  })


def _gemma2(d_model: int, num_layers: int, num_heads: int, num_kv_heads: int, mlp_dim: int):
  # Gemma 2: norms after attention and MLP too, soft-capped attention (50) and output (30)
  # logits, query_pre_attn_scalar 256, local (window 4096) and global layers alternating.
  return _gemma(256000, d_model, num_layers, num_heads, num_kv_heads, mlp_dim, 8192,
                sublayer_post_norm=True, attention_scale=256**-0.5, attention_softcap=50.0,
                final_logit_softcap=30.0, sliding_window=4096,
                layer_types=("local", "global") * (num_layers // 2))


def _transformer(d_model: int, num_heads: int, mlp_dim: int, dropout: float) -> tuple[str, dict]:
  # Vaswani et al. 2017, Table 3: N=6, shared source/target BPE vocabulary of about 37000.
  return "transformer", dict(
      vocab_size=37000, d_model=d_model, num_heads=num_heads, num_encoder_layers=6,
      num_decoder_layers=6, mlp_dim=mlp_dim, dropout_rate=dropout,
  )


def _t5(
    d_model: int, num_layers: int, num_heads: int, mlp_dim: int, *, v1_1: bool,
    vocab: int = 32128,
) -> tuple[str, dict]:
  # Raffel et al. 2020 and the released config.json files: d_kv 64, 32 buckets up to 128.
  # 1.0: ReLU MLP, output tied to the shared table (scaled by d_model**-0.5). v1.1 (Flan, mT5):
  # gated-GELU MLP, untied lm_head, no output scaling.
  layout = dict(activation="gelu_tanh", gated_mlp=True, tie_word_embeddings=False) if v1_1 else {}
  return "t5", dict(
      vocab_size=vocab, d_model=d_model, num_heads=num_heads, head_dim=64, mlp_dim=mlp_dim,
      num_encoder_layers=num_layers, num_decoder_layers=num_layers, **layout,
  )


def _bert(d_model: int, num_layers: int, num_heads: int) -> tuple[str, dict]:
  # Devlin et al. 2019: 30522 WordPiece vocabulary, 512 positions, 2 segment types.
  return "bert", dict(
      vocab_size=30522, max_len=512, d_model=d_model, num_layers=num_layers,
      num_heads=num_heads, mlp_dim=4 * d_model,
  )


def _bert_base_variant(**fields) -> tuple[str, dict]:
  # The released config.json files of BERT-base-shaped encoders (12 heads of 64, mlp 3072).
  return "bert", {**_bert(768, 12, 12)[1], **fields}


def _bart(d_model: int, num_layers: int, num_heads: int, *, vocab: int = 50265,
          mbart: bool = False) -> tuple[str, dict]:
  # Lewis et al. 2020 / Liu et al. 2020 and the released config.json files: learned positions
  # (1024 + the offset 2), layernorm_embedding, GELU, mlp 4 * d_model, pad 1, EOS 2, tied head
  # and final_logits_bias; mBART: pre-LN with final norms, embeddings scaled by sqrt(d_model).
  return "transformer", dict(
      vocab_size=vocab, d_model=d_model, num_heads=num_heads, num_encoder_layers=num_layers,
      num_decoder_layers=num_layers, mlp_dim=4 * d_model, max_len=1026, pad_id=1,
      position="learned", position_offset=2, scale_embeddings=mbart, final_logits_bias=True,
      norm_position="pre" if mbart else "post", embedding_norm=True, activation="gelu",
      init_std=0.02, eos_id=2, decoder_start_id=-1 if mbart else 2,
      label_shift="wrap_last" if mbart else "start_token",
  )


def _vit(patch: int, d_model: int, num_layers: int, num_heads: int, mlp_dim: int):
  # Dosovitskiy et al. 2021, Table 1, at 224 px with a 1000-class head.
  return "vit", dict(
      image_size=224, patch_size=patch, d_model=d_model, num_layers=num_layers,
      num_heads=num_heads, mlp_dim=mlp_dim, num_classes=1000,
  )


def _deit(d_model: int, num_heads: int) -> tuple[str, dict]:
  # Touvron et al. 2021 / facebook/deit-*-distilled-patch16-224 config.json: 12 layers, mlp
  # 4 * d_model, 224 px, 1000 classes, layer_norm_eps 1e-12, DeiTForImageClassificationWithTeacher.
  return "vit", dict(
      image_size=224, patch_size=16, d_model=d_model, num_layers=12, num_heads=num_heads,
      mlp_dim=4 * d_model, num_classes=1000, norm_eps=1e-12, distillation_token=True,
      distillation_head=True,
  )


PRESETS: dict[str, tuple[str, dict]] = {
    "transformer-base": _transformer(512, 8, 2048, 0.1),
    "transformer-big": _transformer(1024, 16, 4096, 0.3),
    "gpt2-small": _gpt2(768, 12, 12),
    "gpt2-medium": _gpt2(1024, 24, 16),
    "gpt2-large": _gpt2(1280, 36, 20),
    "gpt2-xl": _gpt2(1600, 48, 25),
    "gpt3-small": _gpt3(12, 768, 12, 64),
    "gpt3-medium": _gpt3(24, 1024, 16, 64),
    "gpt3-large": _gpt3(24, 1536, 16, 96),
    # Table 2.1 lists 24 heads of 128 for XL, which contradicts d_model=2048 and the 1.3B
    # total (24 x 128 = 3072 would give 1.52B); 16 heads of 128 fits both.
    "gpt3-xl": _gpt3(24, 2048, 16, 128),
    "gpt3-2.7b": _gpt3(32, 2560, 32, 80),
    "gpt3-6.7b": _gpt3(32, 4096, 32, 128),
    "gpt3-13b": _gpt3(40, 5140, 40, 128),  # d_model 5140 as printed in Table 2.1
    "gpt3-175b": _gpt3(96, 12288, 96, 128),
    # Touvron et al. 2023 (Llama 2), Table 1 / the released config.json files.
    "llama2-7b": _llama(32000, 4096, 32, 32, 32, 11008, 4096, norm_eps=1e-5),
    # Llama 3 (Meta, 2024): 128K vocabulary, 8 KV heads, rope_theta 500000.
    "llama3-8b": _llama(128256, 4096, 32, 32, 8, 14336, 8192, norm_eps=1e-5, rope_base=5e5),
    # Jiang et al. 2023 (Mistral 7B v0.1), Table 1: sliding window 4096.
    "mistral-7b": _llama(32000, 4096, 32, 32, 8, 14336, 32768, norm_eps=1e-5,
                         sliding_window=4096),
    # Qwen2.5 0.5B (Qwen team 2024): tied embeddings, biases on q/k/v, head_dim 64.
    "qwen2.5-0.5b": _llama(151936, 896, 24, 14, 2, 4864, 32768, norm_eps=1e-6, rope_base=1e6,
                           tie_embeddings=True, qkv_bias=True),
    # Zhang et al. 2024 (TinyLlama): the Llama 2 layout at 22 layers, 4 KV heads.
    "tinyllama-1.1b": _llama(32000, 2048, 22, 32, 4, 5632, 2048, norm_eps=1e-5),
    # Qwen3 (Qwen team 2025): an RMSNorm on each query and key head, head_dim 128.
    "qwen3-0.6b": _llama(151936, 1024, 28, 16, 8, 3072, 40960, norm_eps=1e-6, rope_base=1e6,
                         head_dim=128, qk_norm=True, tie_embeddings=True),
    "qwen3-8b": _llama(151936, 4096, 36, 32, 8, 12288, 40960, norm_eps=1e-6, rope_base=1e6,
                       head_dim=128, qk_norm=True),
    # Phi-3-mini-4k (Abdin et al. 2024): fused q/k/v and gate/up in its checkpoints, window 2047.
    "phi3-mini": _llama(32064, 3072, 32, 32, 32, 8192, 4096, norm_eps=1e-5, sliding_window=2047,
                        hf_architecture="Phi3ForCausalLM"),
    "gemma-2b": _gemma(256000, 2048, 18, 8, 1, 16384, 8192),  # multi-query
    "gemma-7b": _gemma(256000, 3072, 28, 16, 16, 24576, 8192),
    "gemma2-2b": _gemma2(2304, 26, 8, 4, 9216),
    "gemma2-9b": _gemma2(3584, 42, 16, 8, 14336),
    # Gemma 3 1B: q/k norms, 5 local layers (window 512, RoPE base 10k) per global one (1M).
    "gemma3-1b": _gemma(262144, 1152, 26, 4, 1, 6912, 32768, qk_norm=True, rope_base=1e6,
                        local_rope_base=1e4, sliding_window=512, sublayer_post_norm=True,
                        attention_scale=256**-0.5,
                        layer_types=tuple("global" if i % 6 == 5 else "local" for i in range(26))),
    "t5-small": _t5(512, 6, 8, 2048, v1_1=False),
    "t5-base": _t5(768, 12, 12, 3072, v1_1=False),
    "t5-large": _t5(1024, 24, 16, 4096, v1_1=False),
    "t5-v1_1-small": _t5(512, 8, 6, 1024, v1_1=True),
    "t5-v1_1-base": _t5(768, 12, 12, 2048, v1_1=True),
    "flan-t5-base": _t5(768, 12, 12, 2048, v1_1=True),  # Chung et al. 2022: v1.1 weights, tuned
    "mt5-small": _t5(512, 8, 6, 1024, v1_1=True, vocab=250112),  # Xue et al. 2021
    "bert-base": _bert(768, 12, 12),
    "bert-large": _bert(1024, 24, 16),
    # Released config.json files: RoBERTa (Liu et al. 2019) and XLM-R (Conneau et al. 2020),
    # positions from pad_token_id + 1 = 2 (514-row table), one token type, eps 1e-5.
    "roberta-base": _bert_base_variant(
        vocab_size=50265, max_len=514, type_vocab_size=1, pad_id=1, norm_eps=1e-5,
        position_ids="after_pad", classifier_head="tanh", checkpoint_format="roberta"),
    "xlm-roberta-base": _bert_base_variant(
        vocab_size=250002, max_len=514, type_vocab_size=1, pad_id=1, norm_eps=1e-5,
        position_ids="after_pad", classifier_head="tanh", checkpoint_format="xlm-roberta"),
    # DistilBERT (Sanh et al. 2019): 6 layers, no token types, no pooler.
    "distilbert-base-uncased": _bert_base_variant(
        num_layers=6, token_types=False, pooler=False, classifier_head="relu",
        checkpoint_format="distilbert"),
    # ELECTRA-base discriminator (Clark et al. 2020): embedding_size 768 = hidden, no pooler.
    "electra-base-discriminator": _bert_base_variant(
        pooler=False, classifier_head="gelu", checkpoint_format="electra"),
    "vit-b16": _vit(16, 768, 12, 12, 3072),
    "vit-l16": _vit(16, 1024, 24, 16, 4096),
    "vit-h14": _vit(14, 1280, 32, 16, 5120),
    "deit-tiny-distilled-patch16-224": _deit(192, 3),
    "deit-small-distilled-patch16-224": _deit(384, 6),
    "deit-base-distilled-patch16-224": _deit(768, 12),
    "bart-base": _bart(768, 6, 12),
    "bart-large": _bart(1024, 12, 16),
    "mbart-large-cc25": _bart(1024, 12, 16, vocab=250027, mbart=True),
}

# Parameter counts as published (the source is named next to each group).
PUBLISHED_PARAMS: dict[str, float] = {
    # Vaswani et al. 2017, Table 3.
    "transformer-base": 65e6,
    "transformer-big": 213e6,
    # Radford et al. 2019 (as corrected in the GPT-2 model card / repository).
    "gpt2-small": 124e6,
    "gpt2-medium": 355e6,
    "gpt2-large": 774e6,
    "gpt2-xl": 1558e6,
    # Brown et al. 2020, Table 2.1.
    "gpt3-small": 125e6,
    "gpt3-medium": 350e6,
    "gpt3-large": 760e6,
    "gpt3-xl": 1.3e9,
    "gpt3-2.7b": 2.7e9,
    "gpt3-6.7b": 6.7e9,
    "gpt3-13b": 13.0e9,
    "gpt3-175b": 175.0e9,
    # The model cards / papers of each Llama-family release.
    "llama2-7b": 6.74e9,
    "llama3-8b": 8.03e9,
    "mistral-7b": 7.24e9,
    "qwen2.5-0.5b": 494e6,
    "tinyllama-1.1b": 1.10e9,
    # transformers' own count of the released config.json (meta device, tied weights once).
    "qwen3-0.6b": 596_049_920,
    "qwen3-8b": 8_190_735_360,
    "phi3-mini": 3_821_079_552,
    "gemma-2b": 2_506_172_416,
    "gemma-7b": 8_537_680_896,
    "gemma2-2b": 2_614_341_888,
    "gemma2-9b": 9_241_705_984,
    "gemma3-1b": 999_885_952,
    # The released T5 checkpoints (transformers' T5ForConditionalGeneration, lm_head counted
    # when untied). The papers round them: 60M, 220M, 770M for t5-small/base/large.
    "t5-small": 60_506_624,
    "t5-base": 222_903_552,
    "t5-large": 737_668_096,
    "t5-v1_1-small": 76_961_152,
    "t5-v1_1-base": 247_577_856,
    "flan-t5-base": 247_577_856,
    "mt5-small": 300_176_768,
    # Devlin et al. 2019.
    "bert-base": 110e6,
    "bert-large": 340e6,
    # transformers' count of the released config.json on the meta device, bare *Model class
    # (RobertaModel with its pooler; ElectraForPreTraining would add 591,361, the MLM classes
    # of the others their LM heads).
    "roberta-base": 124_645_632,
    "xlm-roberta-base": 278_043_648,
    "distilbert-base-uncased": 66_362_880,
    "electra-base-discriminator": 108_891_648,
    # Dosovitskiy et al. 2021, Table 1.
    "vit-b16": 86e6,
    "vit-l16": 307e6,
    "vit-h14": 632e6,
    # transformers' count of the released DeiT config.json files (DeiTForImageClassificationWith
    # Teacher on the meta device; tests/test_deit.py recounts them); the paper says 6M, 22M, 87M.
    "deit-tiny-distilled-patch16-224": 5_910_800,
    "deit-small-distilled-patch16-224": 22_436_432,
    "deit-base-distilled-patch16-224": 87_338_192,
    # transformers' count of the released BART / mBART config.json files (*ForConditional
    # Generation on the meta device, tied head once; tests/test_bart.py recounts them). zoo's
    # count adds the vocabulary-sized final_logits_bias, a buffer in transformers.
    "bart-base": 139_420_416,
    "bart-large": 406_291_456,
    "mbart-large-cc25": 610_851_840,
}
