"""BERT's extractive question-answering head against Hugging Face ``BertForQuestionAnswering``.

References: a tiny transformers model with random weights (start / end logits on a padded batch
with segment ids), its own loader (zoo's export loads there with the same logits), and the
token classifier with two labels (the span head is one, without dropout: same shapes, count and
FLOPs).
"""

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util
from reference import randomize

import zoo
from zoo.models.bert import Bert, BertConfig
from zoo.pretrained import api
from zoo.pretrained import bert as bert_conv

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

ATOL = 1e-4
D, N, F, V = 16, 4, 32, 99
QA_PARAMS = ["qa_outputs/bias", "qa_outputs/kernel"]


def _flat(params):
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}


def _hf(arch="BertForQuestionAnswering", seed=0, **kw):
  cfg = transformers.BertConfig(
      vocab_size=V, hidden_size=D, num_hidden_layers=2, num_attention_heads=N,
      intermediate_size=F, max_position_embeddings=32, type_vocab_size=2, pad_token_id=0, **kw,
  )
  return randomize(getattr(transformers, arch)(cfg), seed)


def _save(hf, path):
  hf.save_pretrained(str(path))
  return str(path)


def _inputs():
  """A [CLS] question [SEP] context [SEP] layout: types 1 on the context, the second row padded."""
  rng = np.random.RandomState(1)
  ids = rng.randint(1, V, (2, 12))
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  ids = np.where(mask == 1, ids, 0)
  types = np.zeros_like(ids)
  types[0, 4:] = 1
  types[1, 3:7] = 1
  return ids, types, mask


def _hf_logits(hf, ids, types, mask):
  with torch.no_grad():
    o = hf(input_ids=torch.tensor(ids), token_type_ids=torch.tensor(types),
           attention_mask=torch.tensor(mask))
  return o.start_logits.numpy(), o.end_logits.numpy()


def _zoo(model, params, ids, types, mask):
  return model.apply({"params": params}, ids, token_type_ids=types, attention_mask=mask)


def _max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def test_question_answering_matches_hf_on_a_padded_batch_and_round_trips(tmp_path):
  hf = _hf(seed=3)
  model, params = zoo.from_pretrained(_save(hf, tmp_path / "hf"))
  assert model.config.head == "question_answering" and model.config.pooler is False
  assert set(params) == {"embeddings", "encoder", "qa_outputs"}
  assert params["qa_outputs"]["kernel"].shape == (D, 2)
  ids, types, mask = _inputs()
  start, end = _hf_logits(hf, ids, types, mask)
  out = _zoo(model, params, ids, types, mask)
  assert set(out) == {"last_hidden_state", "start_logits", "end_logits"}
  for key, want in (("start_logits", start), ("end_logits", end)):
    got = out[key]
    assert got.shape == (2, 12) and got.dtype == jnp.float32, key
    # Every position, padded ones too: both mask keys only, so those rows agree as well.
    diff = _max_diff(got, want)
    print(f"{key}: max |zoo - transformers| = {diff:.2e}")
    assert diff < ATOL, key
  # The halves are not interchangeable: start is column 0 of qa_outputs, end column 1.
  assert _max_diff(out["start_logits"], end) > 1e-2

  zoo.save_pretrained(model, params, tmp_path / "zoo2hf")
  hf_config = json.loads((tmp_path / "zoo2hf" / "config.json").read_text())
  assert hf_config["architectures"] == ["BertForQuestionAnswering"]
  back, info = transformers.BertForQuestionAnswering.from_pretrained(
      str(tmp_path / "zoo2hf"), output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  got_start, got_end = _hf_logits(back.eval(), ids, types, mask)
  assert _max_diff(got_start, start) < ATOL and _max_diff(got_end, end) < ATOL
  again = _flat(zoo.from_pretrained(tmp_path / "zoo2hf")[1])
  want = _flat(params)
  assert sorted(again) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(again[k], want[k], err_msg=k)


def test_base_bert_gets_a_fresh_span_head_and_keeps_every_backbone_tensor(tmp_path):
  path = _save(_hf("BertModel", seed=11), tmp_path / "base")
  _, base = zoo.from_pretrained(path)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model, params = zoo.from_pretrained(path, head="question_answering")
  messages = [str(w.message) for w in caught]
  assert any(f"no weights for {QA_PARAMS}" in m and "newly initialised" in m for m in messages)
  # BertForQuestionAnswering has no pooler: the checkpoint's is not used, as for a tagger.
  assert any("['pooler/bias', 'pooler/kernel'] are not used" in m for m in messages), messages
  assert model.config.head == "question_answering" and model.config.pooler is False
  fitted = api.load(path, head="question_answering")
  assert fitted.new == QA_PARAMS and fitted.dropped == ["pooler/bias", "pooler/kernel"]
  assert "qa_outputs" in bert_conv.CONVERTER.head_params

  flat, want = _flat(params), _flat(base)
  assert set(flat) - set(want) == set(QA_PARAMS)
  assert set(want) - set(flat) == {"pooler/bias", "pooler/kernel"}
  for k in set(flat) & set(want):
    np.testing.assert_array_equal(flat[k], want[k], err_msg=k)  # bit for bit
  kernel = flat["qa_outputs/kernel"]
  assert kernel.shape == (D, 2) and np.any(kernel != 0) and abs(kernel.std() - 0.02) < 0.01
  ids, types, mask = _inputs()
  out = _zoo(model, params, ids, types, mask)
  assert out["start_logits"].shape == out["end_logits"].shape == (2, 12)
  assert np.all(np.isfinite(out["start_logits"])) and np.all(np.isfinite(out["end_logits"]))
  # Another seed, another head; and the fresh model exports as the transformers class.
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the same notices as above
    _, other = zoo.from_pretrained(path, head="question_answering", seed=1)
  assert not np.array_equal(_flat(other)["qa_outputs/kernel"], kernel)
  zoo.save_pretrained(model, params, tmp_path / "fresh2hf")
  back = transformers.BertForQuestionAnswering.from_pretrained(str(tmp_path / "fresh2hf")).eval()
  start, end = _hf_logits(back, ids, types, mask)
  assert _max_diff(start, out["start_logits"]) < ATOL
  assert _max_diff(end, out["end_logits"]) < ATOL


def test_a_classifier_with_many_labels_becomes_a_two_output_span_head(tmp_path):
  path = _save(_hf("BertForSequenceClassification", seed=12, num_labels=9), tmp_path / "cls")
  fitted = api.load(path, head="question_answering")  # num_labels=2 is implied by the head
  assert fitted.model.config.num_labels == 2 and fitted.new == QA_PARAMS
  assert {p.split("/")[0] for p in fitted.dropped} == {"classifier", "pooler"}


def test_question_answering_config_errors(tmp_path):
  tiny = dict(vocab_size=V, max_len=32, d_model=D, num_heads=N, num_layers=1, mlp_dim=F)
  with pytest.raises(ValueError, match=r"two outputs per token .* num_labels=3"):
    BertConfig(head="question_answering", num_labels=3, **tiny)
  with pytest.raises(ValueError, match=r"head must be one of .*'question_answering'"):
    BertConfig(head="span", **tiny)
  # A pooler has no place in transformers' class, so such a config does not export.
  with pytest.raises(ValueError, match=r"pooler=True \(BertForQuestionAnswering has none\)"):
    bert_conv.config_to_hf(BertConfig(head="question_answering", **tiny))
  path = _save(_hf("BertModel", seed=13), tmp_path / "base")
  with pytest.raises(ValueError, match=r"num_labels=5"):
    zoo.from_pretrained(path, head="question_answering", num_labels=5)
  # A QA config.json with three labels describes a head transformers cannot split either.
  hf_cfg = bert_conv.config_to_hf(BertConfig(head="question_answering", pooler=False, **tiny))
  hf_cfg["id2label"] = {str(i): f"LABEL_{i}" for i in range(3)}
  with pytest.raises(ValueError, match=r"two outputs per token .* num_labels=3"):
    BertConfig(**bert_conv.config_from_hf(hf_cfg, "BertForQuestionAnswering"))


def test_span_head_is_a_two_label_token_classifier_in_shape_count_and_flops():
  tiny = dict(vocab_size=V, max_len=32, d_model=D, num_heads=N, num_layers=2, mlp_dim=F,
              pooler=False)
  qa = Bert(BertConfig(head="question_answering", **tiny))
  tagger = Bert(BertConfig(head="token_classification", num_labels=2, **tiny))
  ids = jnp.ones((2, 12), jnp.int32)
  qa_shapes = jax.eval_shape(qa.init, jax.random.PRNGKey(0), ids)["params"]
  tag_shapes = jax.eval_shape(tagger.init, jax.random.PRNGKey(0), ids)["params"]
  assert zoo.param_count(qa) == zoo.param_count(tagger)
  family = zoo.registry.family_of(qa.config)
  assert "question_answering" in family.tasks
  shapes = {"input_ids": (4, 12)}
  assert family.train_flops(qa.config, qa_shapes, shapes) == family.train_flops(
      tagger.config, tag_shapes, shapes)

  # In bfloat16 compute the logits are still float32, and they are the head's two columns.
  bf16 = Bert(BertConfig(head="question_answering", dtype=jnp.bfloat16, **tiny))
  params = nn.unbox(bf16.init(jax.random.PRNGKey(0), ids)["params"])
  out = bf16.apply({"params": params}, ids)
  assert out["start_logits"].dtype == out["end_logits"].dtype == jnp.float32
  head = jax.tree.map(lambda x: np.asarray(x, np.float32), params["qa_outputs"])
  h = np.asarray(out["last_hidden_state"], np.float32)
  want = h @ head["kernel"] + head["bias"]
  np.testing.assert_allclose(out["start_logits"], want[..., 0], atol=0.05)
  np.testing.assert_allclose(out["end_logits"], want[..., 1], atol=0.05)
