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


def _transformer(d_model: int, num_heads: int, mlp_dim: int, dropout: float) -> tuple[str, dict]:
  # Vaswani et al. 2017, Table 3: N=6, shared source/target BPE vocabulary of about 37000.
  return "transformer", dict(
      vocab_size=37000, d_model=d_model, num_heads=num_heads, num_encoder_layers=6,
      num_decoder_layers=6, mlp_dim=mlp_dim, dropout_rate=dropout,
  )


def _bert(d_model: int, num_layers: int, num_heads: int) -> tuple[str, dict]:
  # Devlin et al. 2019: 30522 WordPiece vocabulary, 512 positions, 2 segment types.
  return "bert", dict(
      vocab_size=30522, max_len=512, d_model=d_model, num_layers=num_layers,
      num_heads=num_heads, mlp_dim=4 * d_model,
  )


def _vit(patch: int, d_model: int, num_layers: int, num_heads: int, mlp_dim: int):
  # Dosovitskiy et al. 2021, Table 1, at 224 px with a 1000-class head.
  return "vit", dict(
      image_size=224, patch_size=patch, d_model=d_model, num_layers=num_layers,
      num_heads=num_heads, mlp_dim=mlp_dim, num_classes=1000,
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
    "bert-base": _bert(768, 12, 12),
    "bert-large": _bert(1024, 24, 16),
    "vit-b16": _vit(16, 768, 12, 12, 3072),
    "vit-l16": _vit(16, 1024, 24, 16, 4096),
    "vit-h14": _vit(14, 1280, 32, 16, 5120),
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
    # Devlin et al. 2019.
    "bert-base": 110e6,
    "bert-large": 340e6,
    # Dosovitskiy et al. 2021, Table 1.
    "vit-b16": 86e6,
    "vit-l16": 307e6,
    "vit-h14": 632e6,
}
