"""RoBERTa / XLM-R / DistilBERT / ELECTRA folders with their tokenizers: the tokenizers against
transformers' own, ``zoo.analysis attention`` on each, and fine-tuning a RoBERTa folder through
the loop (fresh head, LoRA, frozen backbone) whose export transformers loads with the same logits.

Checkpoints are tiny transformers models with random weights, saved locally with a byte-level BPE
(RoBERTa) or Unigram (XLM-R) tokenizer trained here on a standard-library module.
"""

import json
import os
import runpy
import shutil

import jax
import numpy as np
import pytest
from flax import traverse_util
from reference import randomize

import zoo
from zoo.analysis import attention_maps
from zoo.pretrained import export as export_lib
from zoo.training import loop
from zoo.training import trainable as tr

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")
transformers.logging.set_verbosity_error()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D, N, F = 16, 2, 32
TEXTS = ["def partial(func, *args):", "Return a new  wrapper of a function.", "x"]


def _lines():
  with open(os.path.join(os.path.dirname(os.__file__), "functools.py")) as f:
    return f.read().splitlines()


def _bpe_tokenizer():
  """A RoBERTa tokenizer (byte-level BPE, <s> A </s> </s> B </s>) trained on functools.py."""
  from tokenizers import models, pre_tokenizers, trainers

  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.train_from_iterator(_lines(), trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  model = json.loads(tok.to_str())["model"]
  merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
  return transformers.RobertaTokenizer(vocab=model["vocab"], merges=merges)


def _unigram_tokenizer():
  """An XLM-R tokenizer (SentencePiece-style Unigram, <s> <pad> </s> <unk> first)."""
  from tokenizers import models, normalizers, pre_tokenizers, trainers

  tok = tokenizers.Tokenizer(models.Unigram())
  tok.normalizer = normalizers.NFKC()
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.train_from_iterator(_lines(), trainers.UnigramTrainer(
      vocab_size=200, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], unk_token="<unk>"))
  vocab = [tuple(v) for v in json.loads(tok.to_str())["model"]["vocab"]]
  return transformers.XLMRobertaTokenizer(vocab=[*vocab, ("<mask>", 0.0)])


def _model(family, arch, vocab):
  if family == "distilbert":
    cfg = transformers.DistilBertConfig(vocab_size=vocab, dim=D, n_layers=2, n_heads=N,
                                        hidden_dim=F, max_position_embeddings=64, pad_token_id=1)
  else:
    cls = {"roberta": transformers.RobertaConfig, "xlm-roberta": transformers.XLMRobertaConfig,
           "electra": transformers.ElectraConfig}[family]
    extra = {"embedding_size": 8} if family == "electra" else {"type_vocab_size": 1}
    cfg = cls(vocab_size=vocab, hidden_size=D, num_hidden_layers=2, num_attention_heads=N,
              intermediate_size=F, max_position_embeddings=66, pad_token_id=1, **extra)
  return randomize(getattr(transformers, arch)(cfg), seed=5)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """family -> a checkpoint folder with its tokenizer (RoBERTa's BPE for the BERT-vocabulary
  models too: any tokenizer.json whose ids fit the table)."""
  bpe, unigram = _bpe_tokenizer(), _unigram_tokenizer()
  out = {}
  for family, arch, tok in (("roberta", "RobertaModel", bpe),
                            ("xlm-roberta", "XLMRobertaModel", unigram),
                            ("distilbert", "DistilBertModel", bpe),
                            ("electra", "ElectraModel", bpe)):
    path = tmp_path_factory.mktemp(family)
    _model(family, arch, len(tok)).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    out[family] = str(path)
  return out


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta"])
def test_tokenizer_json_gives_transformers_ids(folders, family, tmp_path):
  ours = zoo.load_tokenizer(folders[family])
  ref = transformers.AutoTokenizer.from_pretrained(folders[family])
  assert ours.kind == "tokenizer.json" and ours.pad_id == ref.pad_token_id == 1
  want = ref(TEXTS, padding=True, return_tensors="np")
  got = ours(TEXTS)
  np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
  np.testing.assert_array_equal(got["attention_mask"], want["attention_mask"])
  pair_want = ref(TEXTS[:1], TEXTS[1:2])["input_ids"][0]
  assert list(ours(TEXTS[:1], TEXTS[1:2])["input_ids"][0]) == pair_want  # <s> A </s></s> B </s>
  assert ours.decode(got["input_ids"][0]) == ref.decode(want["input_ids"][0],
                                                          skip_special_tokens=True)
  # tokenizer.json alone (no tokenizer_config.json): the pad id is still <pad>'s, not 0.
  alone = tmp_path / "alone"
  alone.mkdir()
  shutil.copy(os.path.join(folders[family], "tokenizer.json"), alone / "tokenizer.json")
  assert zoo.load_tokenizer(alone).pad_id == 1


@pytest.mark.parametrize("family", ["roberta", "xlm-roberta", "distilbert", "electra"])
def test_attention_maps_of_each_checkpoint(folders, family):
  numbers = attention_maps.run(checkpoint=folders[family], text="def wraps(func):", head=1)
  tokens = numbers["tokens"]
  assert numbers["num_layers"] == 2 and numbers["num_heads"] == N and len(tokens) > 3
  shown = numbers["layers"][0]
  assert shown["layer"] == 1 and list(shown["heads"]) == ["1"]  # the last layer by default
  ids = zoo.load_tokenizer(folders[family]).encode("def wraps(func):")
  hf = transformers.AutoModel.from_pretrained(folders[family], attn_implementation="eager")
  with torch.no_grad():
    want = hf(torch.tensor([ids]), output_attentions=True).attentions[1][0, 1].numpy()
  got = np.asarray(shown["heads"]["1"])
  assert got.shape == (len(tokens), len(tokens)) == want.shape
  np.testing.assert_allclose(got, want, atol=2e-4)  # the maps are rounded to 4 decimals


def _flat(tree):
  flat = traverse_util.flatten_dict(jax.device_get(tree), sep="/")
  return {k: np.asarray(v) for k, v in flat.items()}


def test_roberta_folder_fine_tunes_with_its_tokenizer_lora_and_exports(folders, tmp_path):
  folder = folders["roberta"]
  c = runpy.run_path(os.path.join(ROOT, "configs", "bert_classify.py"))["get_config"]("bert-base")
  c.init.path = folder  # its tokenizer.json feeds the data (init.tokenizer defaults to True)
  c.data.seq_len = 24
  c.train.update(batch_size=4, num_steps=3, log_every=1, checkpoint_every=100,
                 progress_bar=False, plot=False)
  c.train.compiler_options = {"xla_backend_optimization_level": 0}
  c.optim.update(lr=1e-2, warmup_steps=0, schedule="constant")
  c.eval.update(every=-1)
  c.mesh.update(data=1)
  c.lora.update(rank=2, alpha=4.0)
  c.train.freeze = r"^embeddings/"
  result = loop.train(c, str(tmp_path / "run"), devices=jax.devices()[:1])
  params = _flat(result.state.params)
  base = _flat(zoo.from_pretrained(folder)[1])
  # The two-layer head is new and trained; LoRA adapters on query/value; the rest untouched.
  assert {"classifier/dense/kernel", "classifier/out_proj/kernel"} <= set(params)
  assert "pooler/kernel" not in params
  adapters = [k for k in params if k.rpartition("/")[2] in ("lora_a", "lora_b")]
  assert adapters and all("/attn/query/" in k or "/attn/value/" in k for k in adapters)
  for k, v in params.items():
    if k.rpartition("/")[2] in tr.ADAPTER_NAMES or k.startswith("classifier/"):
      continue
    np.testing.assert_array_equal(v, base[k], err_msg=k)
  assert any(np.any(params[k] != 0) for k in adapters if k.endswith("lora_b"))

  out = tmp_path / "export"
  export_lib.export_run(str(tmp_path / "run"), str(out))
  saved = json.loads((out / "config.json").read_text())
  assert saved["architectures"] == ["RobertaForSequenceClassification"]
  assert saved["pad_token_id"] == 1 and os.path.exists(out / "tokenizer.json")
  hf = transformers.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
  batch = zoo.load_tokenizer(out)(TEXTS)
  ours = result.state.apply_fn({"params": result.state.params}, batch["input_ids"],
                               attention_mask=batch["attention_mask"])["logits"]
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(batch["input_ids"]),
             attention_mask=torch.tensor(batch["attention_mask"])).logits.numpy()
  np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4)
