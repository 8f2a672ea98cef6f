"""Small Hugging Face-format checkpoints with random weights, for trying the fine-tuning recipes
offline: ``python examples/tiny_checkpoints.py OUT``.

Writes ``OUT/gpt2-tiny`` (a 4-layer GPT-2 with a byte-level BPE ``tokenizer.json`` trained on the
standard library's sources, as GPT-2 folders ship one) and ``OUT/vit-tiny`` (a 4-layer ViT at 32
px with a 100-class head and a ``preprocessor_config.json``). Both load in transformers
(``GPT2LMHeadModel``, ``ViTForImageClassification``). They stand in for the real downloads
(``gpt2``, ``google/vit-base-patch16-224``): the same commands take those folders unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def gpt2_tiny(out: str, vocab_size: int = 2048) -> str:
  """A GPT-2 folder: ``config.json``, ``model.safetensors``, ``tokenizer.json``."""
  import jax
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  import zoo
  from zoo.data import offline

  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  docs = offline.lm_documents(None, "train", 0.1)
  tok.train_from_iterator((docs[i] for i in range(min(2000, len(docs)))), trainer)
  model = zoo.build("gpt2-small", vocab_size=tok.get_vocab_size(), max_len=256, d_model=128,
                    num_heads=4, num_layers=4, mlp_dim=512)
  params = model.init(jax.random.PRNGKey(0), jax.numpy.zeros((1, 8), "int32"))["params"]
  folder = os.path.join(out, "gpt2-tiny")
  eos = tok.token_to_id("<|endoftext|>")
  zoo.save_pretrained(model, params, folder, extra={"bos_token_id": eos, "eos_token_id": eos})
  tok.save(os.path.join(folder, "tokenizer.json"))
  return folder


def vit_tiny(out: str) -> str:
  """A ViT folder: ``config.json``, ``model.safetensors``, ``preprocessor_config.json``."""
  import jax

  import zoo

  model = zoo.build("vit-b16", image_size=32, patch_size=8, d_model=128, num_heads=4,
                    num_layers=4, mlp_dim=256, num_classes=100)
  params = model.init(jax.random.PRNGKey(0), jax.numpy.zeros((1, 32, 32, 3)))["params"]
  folder = os.path.join(out, "vit-tiny")
  zoo.save_pretrained(model, params, folder)
  with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
    json.dump({"image_processor_type": "ViTImageProcessor", "do_normalize": True,
               "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
               "size": {"height": 32, "width": 32}}, f, indent=2)
  return folder


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("out", help="folder to write gpt2-tiny/ and vit-tiny/ into")
  args = p.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  for folder in (gpt2_tiny(args.out), vit_tiny(args.out)):
    print(f"wrote {folder}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
