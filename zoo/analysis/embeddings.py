"""What a sentence encoder's embeddings hold: the all-MiniLM-L6-v2 input table and its output.

* a 2-D PCA (numpy SVD) of chosen words' input embeddings (rows of the ``word_embeddings``
  table; a word split into several wordpieces is the mean of their rows);
* the analogy ``king - man + woman``, scored by cosine against the whole vocabulary (the
  three query words excluded, as is usual), with the rank of ``queen``;
* the cosine similarity matrix of mean-pooled (over real tokens) sentence embeddings.

Any family that registers a :class:`zoo.registry.TextEncoder` (BERT) can be read: it says
where the input table is and how to get the last hidden states of a tokenizer's batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zoo import registry
from zoo.analysis import common

DEFAULT_CHECKPOINT = "all-MiniLM-L6-v2"
WORDS = ("king", "queen", "man", "woman", "prince", "princess", "boy", "girl",
         "paris", "france", "london", "england", "cat", "dog", "apple", "banana")
SENTENCES = (
    "A man is playing a guitar.",
    "Someone plays an instrument.",
    "The cat sleeps on the sofa.",
    "A kitten is napping on the couch.",
    "Stock markets fell sharply today.",
)


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``[n, D]`` -> (``[n, 2]`` projection on the top two principal axes, explained fractions)."""
  centred = x - x.mean(axis=0)
  _, s, vt = np.linalg.svd(centred, full_matrices=False)
  return centred @ vt[:2].T, (s**2 / np.sum(s**2))[:2]


def cosine_scores(table: np.ndarray, query: np.ndarray) -> np.ndarray:
  """Cosine of ``query`` ``[D]`` with every row of ``table`` ``[V, D]``."""
  norms = np.linalg.norm(table, axis=1) * np.linalg.norm(query)
  return table @ query / np.maximum(norms, 1e-12)


def analogy(
    table: np.ndarray, a: int, b: int, c: int, target: int, *, exclude: bool = True, top: int = 5
) -> dict:
  """``a - b + c`` against every row of ``table``: the rank (1 = best) of ``target``.

  With ``exclude`` the three query rows are not candidates.
  """
  table = np.asarray(table, np.float64)
  scores = cosine_scores(table, table[a] - table[b] + table[c])
  if exclude:
    scores[[a, b, c]] = -np.inf
  order = np.argsort(-scores, kind="stable")
  rank = int(np.nonzero(order == target)[0][0]) + 1
  return dict(rank=rank, target_cosine=float(scores[target]),
              top=[(int(i), float(scores[i])) for i in order[:top]])


def _word_rows(table, tokenizer, words) -> tuple[np.ndarray, list[list[int]]]:
  pieces = [tokenizer.encode(w, add_special_tokens=False) for w in words]
  for w, p in zip(words, pieces):
    if not p:
      raise common.AnalysisError(f"{w!r} encodes to no wordpieces.")
  return np.stack([table[p].mean(axis=0) for p in pieces]), pieces


def run(
    *,
    checkpoint: str = DEFAULT_CHECKPOINT,
    words: Sequence[str] = WORDS,
    sentences: Sequence[str] = SENTENCES,
) -> dict:
  """Load the checkpoint and compute the three experiments (see the module docstring)."""
  import zoo

  try:
    model, params = zoo.from_pretrained(checkpoint)
    tokenizer = zoo.load_tokenizer(checkpoint)
  except (OSError, ValueError, KeyError) as e:
    raise common.AnalysisError(f"cannot read checkpoint {checkpoint!r}: {e}") from e
  encoder = registry.family_of(model).text_encoder
  if encoder is None or tokenizer is None:
    raise common.AnalysisError(
        f"embeddings needs a text encoder checkpoint "
        f"({' or '.join(registry.capable('text_encoder'))}) with a tokenizer; {checkpoint!r} is "
        f"a {type(model).__name__}{'' if tokenizer else ' without a tokenizer'}."
    )
  if len(words) < 3:
    raise common.AnalysisError(f"--words needs at least 3 words for a PCA; got {len(words)}.")
  table = np.asarray(encoder.token_embeddings(params), np.float32)
  rows, pieces = _word_rows(table, tokenizer, words)
  xy, explained = pca_2d(rows)

  analogy_words = ("king", "man", "woman", "queen")
  ids = {w: tokenizer.encode(w, add_special_tokens=False) for w in analogy_words}
  if any(len(p) != 1 for p in ids.values()):
    raise common.AnalysisError(f"the analogy words must be single wordpieces; got {ids}.")
  a, b, c, target = (ids[w][0] for w in analogy_words)
  result = analogy(table, a, b, c, target)
  result["top"] = [(tokenizer.decode([i]), s) for i, s in result["top"]]
  result_incl = analogy(table, a, b, c, target, exclude=False)

  batch = tokenizer(list(sentences))
  hidden = np.asarray(encoder.hidden_states(model, params, batch), np.float32)
  mask = np.asarray(batch["attention_mask"], np.float32)[..., None]
  pooled = (hidden * mask).sum(1) / mask.sum(1)
  pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
  return dict(
      checkpoint=checkpoint,
      pca=dict(words=list(words), wordpieces=pieces, xy=xy, explained_variance=explained),
      analogy=dict(query="king - man + woman", target="queen", vocab_size=table.shape[0],
                   rank=result["rank"], cosine=result["target_cosine"], top=result["top"],
                   rank_with_query_words=result_incl["rank"]),
      sentences=dict(texts=list(sentences), cosine=pooled @ pooled.T),
  )


def plot(numbers: dict):
  """PCA scatter, the analogy's nearest words, and the sentence similarity heatmap."""
  plt = common.pyplot()
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5), gridspec_kw=dict(width_ratios=[1.2, 0.8, 1]))
  pca = numbers["pca"]
  xy = np.asarray(pca["xy"])
  axes[0].scatter(xy[:, 0], xy[:, 1], s=12)
  for (x, y), w in zip(xy, pca["words"]):
    axes[0].annotate(w, (x, y), fontsize=8, xytext=(2, 2), textcoords="offset points")
  ev = pca["explained_variance"]
  axes[0].set(title="input embeddings, PCA", xlabel=f"PC1 ({ev[0]:.0%})",
              ylabel=f"PC2 ({ev[1]:.0%})")
  an = numbers["analogy"]
  names, scores = zip(*an["top"])
  colors = ["C1" if n == an["target"] else "C0" for n in names]
  axes[1].barh(range(len(names))[::-1], scores, color=colors)
  axes[1].set_yticks(range(len(names))[::-1], names)
  axes[1].set(xlabel="cosine",
              title=f"{an['query']}: {an['target']} ranks {an['rank']} of {an['vocab_size']}")
  sent = numbers["sentences"]
  sim = np.asarray(sent["cosine"])
  im = axes[2].imshow(sim, cmap="viridis", vmin=min(0.0, sim.min()), vmax=1)
  labels = [t if len(t) < 28 else t[:25] + "..." for t in sent["texts"]]
  axes[2].set_xticks(range(len(labels)), range(len(labels)))
  axes[2].set_yticks(range(len(labels)), [f"{i}: {t}" for i, t in enumerate(labels)], fontsize=7)
  for i in range(len(sim)):
    for j in range(len(sim)):
      axes[2].text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=7, color="w")
  axes[2].set_title("sentence cosine (mean-pooled)")
  fig.colorbar(im, ax=axes[2])
  fig.tight_layout()
  return fig


def add_arguments(parser) -> None:
  parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help="a BERT checkpoint")
  parser.add_argument("--words", default=",".join(WORDS), help="comma-separated words for PCA")
  parser.add_argument("--sentences", default="|".join(SENTENCES), help="'|'-separated sentences")


def main(args) -> dict:
  numbers = run(checkpoint=args.checkpoint,
                words=[w.strip() for w in args.words.split(",") if w.strip()],
                sentences=[s.strip() for s in args.sentences.split("|") if s.strip()])
  common.write(args.out, "embeddings", plot(numbers), numbers)
  return numbers
