"""RoBERTa, XLM-RoBERTa, DistilBERT and ELECTRA (BERT family) against Hugging Face.

References: tiny transformers models of every converted class, built locally with random weights
(logits on a padded batch, the export loaded back by transformers with no missing or unexpected
tensor, zoo -> HF -> zoo the identity), transformers' own tokenizers of the same folders, and
transformers' parameter count of each released config.json on the meta device.
"""

import json

import jax
import numpy as np
import pytest
from flax import traverse_util
from reference import randomize

import zoo
from zoo.pretrained import api

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

ATOL = 1e-4
D, N, F, V, E = 16, 4, 32, 99, 8


def _config(family, **kw):
  common = dict(vocab_size=V, num_labels=kw.pop("num_labels", 3))
  if family == "distilbert":
    return transformers.DistilBertConfig(dim=D, n_layers=2, n_heads=N, hidden_dim=F,
                                         max_position_embeddings=32, pad_token_id=0, **common)
  bert_names = dict(hidden_size=D, num_hidden_layers=2, num_attention_heads=N,
                    intermediate_size=F, **common)
  if family == "electra":
    return transformers.ElectraConfig(embedding_size=kw.pop("embedding_size", E),
                                      max_position_embeddings=32, pad_token_id=0,
                                      **{**bert_names, **kw})
  cls = transformers.RobertaConfig if family == "roberta" else transformers.XLMRobertaConfig
  return cls(max_position_embeddings=40, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
             eos_token_id=2, **bert_names)


HEADS = {  # transformers class suffix -> the outputs compared (HF name, zoo name)
    "Model": (("last_hidden_state", "last_hidden_state"),),
    "ForMaskedLM": (("logits", "mlm_logits"),),
    "ForSequenceClassification": (("logits", "logits"),),
    "ForTokenClassification": (("logits", "logits"),),
    "ForQuestionAnswering": (("start_logits", "start_logits"), ("end_logits", "end_logits")),
    "ForPreTraining": (("logits", "logits"),),
}
FAMILIES = {"roberta": "Roberta", "xlm-roberta": "XLMRoberta", "distilbert": "DistilBert",
            "electra": "Electra"}
ARCHS = [
    (family, FAMILIES[family] + kind) for family in FAMILIES for kind in HEADS
    if not (family == "electra" and kind == "ForMaskedLM")
    and not (family != "electra" and kind == "ForPreTraining")
]


def _kind(arch):
  return next(k for k in HEADS if arch.endswith(k) and arch[: -len(k)] in FAMILIES.values())


def _flat(params):
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}


def _max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _inputs(family):
  """Two rows, the second padded after 7 tokens with the model's pad id; types for ELECTRA."""
  pad = 1 if "roberta" in family else 0
  ids = np.random.RandomState(1).randint(3, V, (2, 12))
  mask = np.ones_like(ids)
  mask[1, 7:] = 0
  ids = np.where(mask == 1, ids, pad)
  kwargs = {"attention_mask": mask}
  if family == "electra":
    types = np.zeros_like(ids)
    types[0, 5:] = 1
    kwargs["token_type_ids"] = types
  return ids, kwargs


def _hf_outputs(hf, arch, ids, kwargs):
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(ids), **{k: torch.tensor(v) for k, v in kwargs.items()})
  return {z: getattr(out, h).numpy() for h, z in HEADS[_kind(arch)]}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """``(family, arch) -> (hf model, saved folder)``, each built once for the module."""
  made = {}

  def get(family, arch, **kw):
    key = (family, arch, tuple(sorted(kw.items())))
    if key not in made:
      labels = 2 if arch.endswith("QuestionAnswering") else 3  # the span head has 2 outputs
      hf = randomize(getattr(transformers, arch)(_config(family, num_labels=labels, **kw)),
                     seed=len(made))
      path = tmp_path_factory.mktemp(arch)
      hf.save_pretrained(str(path))
      made[key] = hf, str(path)
    return made[key]

  return get


@pytest.mark.parametrize("family,arch", ARCHS, ids=[a for _, a in ARCHS])
def test_logits_match_hf_on_a_padded_batch_and_export_round_trips(folders, tmp_path, family,
                                                                  arch):
  hf, path = folders(family, arch)
  model, params = zoo.from_pretrained(path)
  assert model.config.checkpoint_format == family
  ids, kwargs = _inputs(family)
  want = _hf_outputs(hf, arch, ids, kwargs)
  got = model.apply({"params": params}, ids, **kwargs)
  for key, ref in want.items():
    diff = _max_diff(got[key], ref)
    print(f"{arch} {key}: max |zoo - transformers| = {diff:.2e}")
    assert got[key].shape == ref.shape and diff < ATOL, (key, diff)

  zoo.save_pretrained(model, params, tmp_path / "zoo2hf")
  saved = json.loads((tmp_path / "zoo2hf" / "config.json").read_text())
  assert saved["architectures"] == [arch] and saved["model_type"] == family
  back, info = getattr(transformers, arch).from_pretrained(str(tmp_path / "zoo2hf"),
                                                           output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  again = _hf_outputs(back.eval(), arch, ids, kwargs)
  for key, ref in want.items():
    assert _max_diff(again[key], ref) < ATOL, key
  _, params2 = zoo.from_pretrained(tmp_path / "zoo2hf")
  a, b = _flat(params), _flat(params2)
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_positions_count_real_tokens_from_pad_plus_one_on_a_left_padded_row(folders):
  """RoBERTa's positions (fairseq's make_positions) with padding first: transformers agrees."""
  hf, path = folders("roberta", "RobertaModel")
  model, params = zoo.from_pretrained(path)
  ids = np.array([[1, 1, 1, 7, 8, 9, 10, 11], [5, 6, 1, 7, 8, 1, 1, 1]])
  mask = (ids != 1).astype(np.int32)
  want = _hf_outputs(hf, "RobertaModel", ids, {"attention_mask": mask})["last_hidden_state"]
  got = model.apply({"params": params}, ids, attention_mask=mask)["last_hidden_state"]
  assert _max_diff(got, want) < ATOL
  # Positions 2, 3, ... for real tokens whatever padding precedes them: the last five tokens
  # of row 0 read the same table rows as a row that starts with them.
  alone = model.apply({"params": params}, ids[:1, 3:])["last_hidden_state"]
  assert _max_diff(got[0, 3:], alone[0]) < ATOL
  # One token type: a pair tokenizer's type ids are not read (RoBERTa's tokenizers give none).
  typed = model.apply({"params": params}, ids, attention_mask=mask,
                      token_type_ids=np.ones_like(ids))["last_hidden_state"]
  np.testing.assert_array_equal(typed, got)
  too_long = np.full((1, 39), 5)  # 40 table rows, counted from pad_id + 1 = 2: 38 tokens
  with pytest.raises(ValueError, match=r"at most 38 tokens .*position_ids='after_pad'"):
    model.apply({"params": params}, too_long)


def test_fresh_heads_from_base_and_pretraining_checkpoints(folders):
  cases = [
      ("roberta", "RobertaModel", "sequence_classification",
       ["classifier/dense/bias", "classifier/dense/kernel", "classifier/out_proj/bias",
        "classifier/out_proj/kernel"], {"pooler"}),
      ("distilbert", "DistilBertForMaskedLM", "question_answering",
       ["qa_outputs/bias", "qa_outputs/kernel"], {"mlm"}),
      ("electra", "ElectraForPreTraining", "token_classification",
       ["classifier/bias", "classifier/kernel"], {"discriminator_predictions"}),
  ]
  for family, arch, head, new, dropped in cases:
    _, path = folders(family, arch)
    fitted = api.load(path, head=head)
    assert fitted.new == new, (arch, fitted.new)
    assert {p.split("/")[0] for p in fitted.dropped} == dropped, (arch, fitted.dropped)
    assert fitted.model.config.checkpoint_format == family and not fitted.model.config.pooler


def _edit_config(path, tmp_path, **changes):
  import shutil

  out = tmp_path / "edited"
  shutil.copytree(path, out)
  cfg = json.loads((out / "config.json").read_text())
  cfg.update(changes)
  (out / "config.json").write_text(json.dumps(cfg))
  return str(out)


@pytest.mark.parametrize("family,arch,changes,message", [
    ("roberta", "RobertaForMaskedLM", {"model_type": "roberta-prelayernorm"},
     r"model_type='roberta-prelayernorm' is not supported for RobertaForMaskedLM"),
    ("roberta", "RobertaForMaskedLM",
     {"architectures": ["RobertaPreLayerNormForMaskedLM"], "model_type": "roberta-prelayernorm"},
     r"architecture \['RobertaPreLayerNormForMaskedLM'\] \(model_type 'roberta-prelayernorm'\) "
     r"is not supported"),
    ("xlm-roberta", "XLMRobertaModel", {"position_embedding_type": "relative_key"},
     r"position_embedding_type='relative_key' is not supported"),
    ("electra", "ElectraModel", {"position_embedding_type": "relative_key_query"},
     r"ELECTRA position_embedding_type='relative_key_query' is not supported"),
    ("roberta", "RobertaForMaskedLM", {"hidden_act": "relu"},
     r"RobertaForMaskedLM with hidden_act='relu' is not supported"),
    ("distilbert", "DistilBertModel", {"sinusoidal_pos_embds": True},
     r"sinusoidal_pos_embds=True is not supported"),
])
def test_unimplemented_variants_are_one_error_naming_the_field(folders, tmp_path, family, arch,
                                                                changes, message):
  _, path = folders(family, arch)
  with pytest.raises(ValueError, match=message):
    zoo.from_pretrained(_edit_config(path, tmp_path, **changes))


def test_configs_without_an_hf_equivalent_are_refused_on_export(tmp_path):
  from zoo.models.bert import Bert, BertConfig

  tiny = dict(vocab_size=V, max_len=32, d_model=D, num_heads=N, num_layers=1, mlp_dim=F)
  cases = [
      (dict(position_ids="after_pad"), r"BERT equivalent: position_ids='after_pad'"),
      (dict(checkpoint_format="roberta", classifier_head="tanh"),
       r"RoBERTa equivalent: position_ids='index' \(RoBERTa has 'after_pad'\)"),
      (dict(checkpoint_format="distilbert", pooler=False, classifier_head="relu"),
       r"DistilBERT equivalent: token_types=True"),
      (dict(checkpoint_format="electra", head="pretraining"), r"ELECTRA equivalent: head="),
  ]
  for fields, message in cases:
    model = Bert(BertConfig(**tiny, **fields))
    params = model.init(jax.random.PRNGKey(0), np.ones((1, 4), np.int32))
    with pytest.raises(ValueError, match=message):
      zoo.save_pretrained(model, params["params"], tmp_path / "out")
  with pytest.raises(ValueError, match=r"embedding_size=8 != d_model=16"):
    BertConfig(**tiny, embedding_size=8, head="mlm")
  with pytest.raises(ValueError, match=r"CheckpointFormat|checkpoint_format must be one of"):
    BertConfig(**tiny, checkpoint_format="deberta")


def _hf_count(cls, cfg):
  with torch.device("meta"):
    model = cls(cfg)
  return sum(p.numel() for p in model.parameters())


def test_presets_have_transformers_count_of_the_released_configs():
  """The bare ``*Model`` of each released config.json (values as published on the Hub)."""
  bert_base = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072)
  roberta = dict(bert_base, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                 layer_norm_eps=1e-5)
  released = {
      "roberta-base": (transformers.RobertaModel,
                       transformers.RobertaConfig(vocab_size=50265, **roberta)),
      "xlm-roberta-base": (transformers.XLMRobertaModel,
                           transformers.XLMRobertaConfig(vocab_size=250002, **roberta)),
      "distilbert-base-uncased": (transformers.DistilBertModel, transformers.DistilBertConfig(
          vocab_size=30522, dim=768, n_layers=6, n_heads=12, hidden_dim=3072,
          max_position_embeddings=512)),
      "electra-base-discriminator": (transformers.ElectraModel, transformers.ElectraConfig(
          vocab_size=30522, embedding_size=768, max_position_embeddings=512, type_vocab_size=2,
          **bert_base)),
  }
  for name, (cls, cfg) in released.items():
    want = _hf_count(cls, cfg)
    assert zoo.param_count(name, scan_layers=True) == want == zoo.presets.PUBLISHED_PARAMS[name]
    assert zoo.get_config(name).checkpoint_format == name.split("-base")[0]


def test_electra_with_embedding_size_equal_to_hidden_has_no_projection(folders):
  """electra-base's layout: embedding_size == hidden_size, so no embeddings_project."""
  hf, path = folders("electra", "ElectraForPreTraining", embedding_size=D)
  model, params = zoo.from_pretrained(path)
  assert model.config.embedding_size is None and "embeddings_project" not in params
  ids, kwargs = _inputs("electra")
  want = _hf_outputs(hf, "ElectraForPreTraining", ids, kwargs)["logits"]
  assert _max_diff(model.apply({"params": params}, ids, **kwargs)["logits"], want) < ATOL
