"""Task metrics against independent references: scikit-learn, sacrebleu's CLI, hand-worked spans."""

import math
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import f1_score

from zoo import registry
from zoo.data import IGNORE_INDEX as IGNORE
from zoo.data.tokenizers import ByteTokenizer
from zoo.tasks import metrics as eval_metrics


def _collect(task, outputs, batches):
  """What evaluation does: the task's predictions per batch, concatenated on the host."""
  parts = [task.predictions(o, b) for o, b in zip(outputs, batches, strict=True)]
  return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}


def test_classification_macro_f1_equals_sklearn_on_the_real_rows():
  rng = np.random.RandomState(0)
  task = registry.task("classification")
  outputs, batches, real_labels, real_preds = [], [], [], []
  for _ in range(3):
    logits = rng.randn(8, 5).astype(np.float32)
    labels = rng.randint(0, 5, 8).astype(np.int32)
    labels[-2:] = IGNORE  # padded rows of a short last batch
    outputs.append({"logits": jnp.asarray(logits)})
    batches.append({"labels": jnp.asarray(labels)})
    real_labels.append(labels[:-2])
    real_preds.append(logits[:-2].argmax(-1))
  got = task.host_metrics(_collect(task, outputs, batches), {}, {"num_labels": 5})
  want = f1_score(np.concatenate(real_labels), np.concatenate(real_preds), average="macro")
  assert got["macro_f1"] == pytest.approx(want, abs=1e-12)
  assert 0.0 < want < 1.0


def _span_f1(gold: str, pred: str) -> dict[str, float]:
  names = ("B", "M", "E", "S")
  ids = lambda s: [names.index(c) for c in s.split()]  # noqa: E731
  return eval_metrics.span_scores([ids(gold)], [ids(pred)], names)


def test_word_segmentation_span_scores_worked_by_hand():
  # Gold words: [0,1] [2] [3,5]. Predicted: [0,1] [2,3] [4] [5]. One word right:
  # P = 1/4, R = 1/3, F1 = 2PR / (P + R) = 2/7.
  s = _span_f1("B E S B M E", "B E B E S S")
  assert s["span_precision"] == pytest.approx(1 / 4)
  assert s["span_recall"] == pytest.approx(1 / 3)
  assert s["span_f1"] == pytest.approx(2 / 7)
  assert _span_f1("B M E S", "B M E S")["span_f1"] == 1.0
  # A word needs both of its boundaries: "M E" has no start, so it is no word at all.
  s = _span_f1("S B E", "S M E")
  assert s["span_precision"] == pytest.approx(1.0) and s["span_recall"] == pytest.approx(1 / 2)


def test_tagging_task_reads_only_labelled_positions():
  task = registry.task("tagging")
  # Row: [CLS] a b [SEP] pad -> labels only on the two characters.
  labels = np.array([[IGNORE, 0, 2, IGNORE, IGNORE]], np.int32)
  logits = np.full((1, 5, 4), -5.0, np.float32)
  logits[0, 1, 0] = logits[0, 2, 2] = 5.0  # predicts B E on the characters
  logits[0, 0, 3] = logits[0, 3, 3] = 5.0  # junk on unlabelled positions is ignored
  collected = _collect(task, [{"logits": jnp.asarray(logits)}], [{"labels": jnp.asarray(labels)}])
  scores = task.host_metrics(collected, {}, {"label_names": ("B", "M", "E", "S")})
  assert scores == {"span_precision": 1.0, "span_recall": 1.0, "span_f1": 1.0}


def test_corpus_bleu_equals_the_sacrebleu_command_line(tmp_path):
  hyps = ["the cat sat on the mat", "quatre-vingt-un", "a b c d e f", "hello there world"]
  refs = ["the cat sat on a mat", "quatre-vingt-un", "a b c d e g", "hello world"]
  (tmp_path / "hyp.txt").write_text("\n".join(hyps) + "\n")
  (tmp_path / "ref.txt").write_text("\n".join(refs) + "\n")
  cli = subprocess.run(
      [sys.executable, "-m", "sacrebleu", str(tmp_path / "ref.txt"),
       "-i", str(tmp_path / "hyp.txt"), "-b", "-w", "6"],
      capture_output=True, text=True, check=True, timeout=120,
  )
  assert eval_metrics.corpus_bleu(hyps, refs) == pytest.approx(float(cli.stdout.strip()), abs=1e-5)
  with pytest.raises(ValueError, match="3 hypotheses for 4 references"):
    eval_metrics.corpus_bleu(hyps[:3], refs)


def test_bits_per_byte_of_a_byte_model_is_nats_per_byte_over_ln2():
  tok = ByteTokenizer()
  task = registry.task("lm")
  text = "def f(x):\n  return x\n"
  ids = np.array([tok.encode(text) + [tok.eos_id]], np.int32)
  weights = np.ones_like(ids, np.float32)
  weights[0, :3] = 0.0  # not predicted: their bytes do not count
  nll_sum = 37.5
  collected = _collect(
      task, [None], [{"targets": jnp.asarray(ids), "weights": jnp.asarray(weights)}]
  )
  got = task.host_metrics(collected, {"nll": (nll_sum, 1.0)}, {"tokenizer": tok})
  predicted_bytes = len(text) - 3  # EOS is no byte
  assert got["bits_per_byte"] == pytest.approx(nll_sum / math.log(2) / predicted_bytes)
