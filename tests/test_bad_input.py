"""Bad input at the public surface: each case names the value, the problem and the fix, as a
ValueError before any tracing, or as one paragraph and exit code 2 from a CLI."""

import importlib.util
import pathlib
import re

import jax
import numpy as np
import pytest

import zoo
from zoo import registry
from zoo.generate import cli as generate_cli
from zoo.generate import generate, translate_ids
from zoo.models.bert import BertConfig
from zoo.models.gpt import GPTConfig
from zoo.pretrained import __main__ as pretrained_cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("zoo_train_cli_bad", ROOT / "train.py")
train_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_cli)

TINY = dict(vocab_size=64, max_len=16, d_model=16, num_heads=2, num_layers=1, mlp_dim=32)


@pytest.fixture(scope="module")
def gpt():
  model = zoo.build(GPTConfig(**TINY))
  return model, model.init(jax.random.PRNGKey(0), np.zeros((1, 4), np.int32))["params"]


@pytest.fixture()
def gpt_folder(gpt, tmp_path):
  zoo.save_pretrained(*gpt, tmp_path / "gpt")
  return tmp_path / "gpt"


# ----------------------------------------------------------------------------------------------
# Library calls.


@pytest.mark.parametrize("prompts", ["hello", ["hi", "there"], [[1, "2"]]])
def test_generate_wants_token_ids_and_says_how_to_get_them(gpt, prompts):
  with pytest.raises(ValueError, match=r"prompts must be token ids.*(encode|int lists)"):
    generate(*gpt, prompts, max_new_tokens=2)


def test_generate_and_translate_refuse_the_wrong_family(gpt):
  bert = zoo.build(BertConfig(**TINY))
  # The families that decode are the registry's: adding one changes the list, not this test.
  lms, seq2seqs = (" or ".join(registry.capable(c)) for c in ("causal_lm", "seq2seq"))
  with pytest.raises(ValueError, match=rf"generate decodes {lms} models; got Bert.*translate_ids"):
    generate(bert, gpt[1], [[1, 2]], max_new_tokens=2)
  with pytest.raises(ValueError, match=rf"translate_ids decodes {seq2seqs} models; got GPT"):
    translate_ids(*gpt, [[1, 2]], max_new_tokens=2, decoder_start_id=0, eos_id=1)


def test_saving_another_models_params_names_the_mismatch(gpt, tmp_path):
  bert = zoo.build(BertConfig(**TINY))
  with pytest.raises(ValueError, match=r"do not belong to this Bert.*missing .*model.init"):
    zoo.save_pretrained(bert, gpt[1], tmp_path / "out")
  wide = zoo.build(GPTConfig(**{**TINY, "d_model": 32}))
  with pytest.raises(ValueError, match=r"do not belong to this GPT.*d_model=32.*mis-shaped"):
    zoo.save_pretrained(wide, gpt[1], tmp_path / "out")


@pytest.mark.parametrize("damage,why", [
    (lambda p: p.write_bytes(p.read_bytes()[:5]), "shorter than the 8-byte header"),
    (lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated: the tensors end at byte"),
    (lambda p: p.write_bytes(p.read_bytes()[:100] + b"\x00" * 10 + p.read_bytes()[110:]),
     "JSON header does not parse"),
    (lambda p: p.write_bytes((10**9).to_bytes(8, "little") + p.read_bytes()[8:]),
     "header claims 1000000000 bytes"),
], ids=["tiny", "truncated", "garbled_header", "huge_header"])
def test_damaged_safetensors_name_the_file(gpt_folder, damage, why):
  damage(gpt_folder / "model.safetensors")
  with pytest.raises(ValueError, match=rf"model.safetensors is not a valid safetensors file: "
                                       rf".*{why}.*export it again"):
    zoo.from_pretrained(gpt_folder)


@pytest.mark.parametrize("text,why", [
    ('{"model_type": "gpt2", ', r"config.json is not valid JSON: .* line 1, column"),
    ('{"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}',
     r"config.json lacks the field '(vocab_size|n_embd)'.*re-export"),
], ids=["truncated", "missing_field"])
def test_broken_config_json_names_the_file_and_field(gpt_folder, text, why):
  (gpt_folder / "config.json").write_text(text)
  with pytest.raises(ValueError, match=why):
    zoo.from_pretrained(gpt_folder)


def test_config_json_that_is_not_an_object_names_the_file_and_what_it_holds(gpt_folder):
  (gpt_folder / "config.json").write_text('[{"model_type": "gpt2"}]')
  with pytest.raises(ValueError, match=r"gpt/config\.json holds a JSON list \(\[\{.*not the JSON "
                                       r"object .* restore the file .* save the checkpoint again"):
    zoo.from_pretrained(gpt_folder)


def test_a_missing_npz_names_the_path_and_what_to_give(tmp_path):
  missing = tmp_path / "missing.npz"
  want = f"{missing} does not exist: a ViT checkpoint ending in .npz must be a file"
  with pytest.raises(FileNotFoundError, match=re.escape(want) + ".*check the path"):
    zoo.from_pretrained(missing)
  (tmp_path / "junk.npz").write_text("not a zip")
  with pytest.raises(ValueError, match=r"junk\.npz is not a readable \.npz archive.*save it again"):
    zoo.from_pretrained(tmp_path / "junk.npz")


def test_a_folder_without_tokenizer_files_names_what_was_looked_for(gpt_folder):
  want = (f"{gpt_folder} holds no tokenizer: zoo looked for source.spm + target.spm + "
          "vocab.json or tokenizer.json or spiece.model or vocab.txt or vocab.json + merges.txt. "
          "Copy ")
  with pytest.raises(ValueError, match=re.escape(want) + ".*required=False"):
    zoo.load_tokenizer(gpt_folder)
  assert zoo.load_tokenizer(gpt_folder, required=False) is None


def test_saving_onto_an_existing_file_says_a_folder_is_needed(gpt, tmp_path):
  afile = tmp_path / "afile"
  afile.write_text("x")
  want = f"{afile} is an existing file, but save_pretrained writes a folder there; give the path"
  with pytest.raises(ValueError, match=re.escape(want)):
    zoo.save_pretrained(*gpt, afile)
  with pytest.raises(ValueError, match=re.escape(f"{afile} is an existing file, but save_zoo")):
    zoo.pretrained.save_zoo(*gpt, afile)
  assert afile.read_text() == "x"


# ----------------------------------------------------------------------------------------------
# Command lines: one paragraph on stderr, exit code 2, no traceback.


def _one_paragraph(capsys, code, *needles):
  err = capsys.readouterr().err
  assert code == 2, err
  assert "Traceback" not in err and err.strip().count("\n") == 0, err
  for needle in needles:
    assert needle in err, err
  return err


def test_train_cli_bad_paths(capsys, tmp_path):
  afile = tmp_path / "afile"
  afile.write_text("x")
  code = train_cli.main(["train.py", "--config", "configs/nope.py", "--workdir", str(tmp_path)])
  _one_paragraph(capsys, code, "configs/nope.py", "Did you mean")
  code = train_cli.main(["train.py", "--config", "configs/gpt.py:smoke", "--workdir", str(afile)])
  _one_paragraph(capsys, code, f"--workdir {afile} is a file", "give a directory")
  code = train_cli.main(["train.py", "--config", "configs/gpt.py:finetune", "--workdir",
                         str(tmp_path / "w"), f"--config.init.path={tmp_path / 'missing'}"])
  _one_paragraph(capsys, code, str(tmp_path / "missing"), "give a Hugging Face folder")


@pytest.mark.parametrize("override,needles", [
    ("--config.model.num_layers=0", ("num_layers=0", ">= 1")),
    ("--config.model.dropout_rate=1.5", ("dropout_rate must be in [0, 1)", "got 1.5")),
    ("--config.optim.lr=-1", ("optim.lr=-1.0", "must be >= 0")),
    ("--config.model.num_layers=two", ("num_layers", "two")),
])
def test_train_cli_impossible_values(capsys, tmp_path, override, needles):
  code = train_cli.main(["train.py", "--config", "configs/gpt.py:smoke", "--workdir",
                         str(tmp_path), override])
  _one_paragraph(capsys, code, *needles)


def test_pretrained_cli_bad_paths(capsys, tmp_path, gpt_folder):
  code = pretrained_cli.main(["export", str(tmp_path / "missing"), str(tmp_path / "o")])
  _one_paragraph(capsys, code, "is not a train.py workdir", "zoo.pretrained convert")
  (gpt_folder / "model.safetensors").write_bytes(b"\x01\x02")
  code = pretrained_cli.main(["convert", str(gpt_folder), str(tmp_path / "o")])
  _one_paragraph(capsys, code, "model.safetensors is not a valid safetensors file")


def test_generate_cli_bad_paths(capsys, tmp_path, gpt_folder):
  afile = tmp_path / "afile"
  afile.write_text("x")
  for path in (tmp_path / "missing", afile):
    code = generate_cli.main(["--checkpoint", str(path), "--prompt", "hi"])
    _one_paragraph(capsys, code, f"--checkpoint {path} is not a directory")
  (gpt_folder / "config.json").write_text('{"model_type": "gpt2"}')
  code = generate_cli.main(["--checkpoint", str(gpt_folder), "--prompt_ids", "1,2"])
  _one_paragraph(capsys, code, "config.json lacks the field")
  (tmp_path / "run" / "checkpoints").mkdir(parents=True)
  code = generate_cli.main(["--checkpoint", str(tmp_path / "run"), "--prompt", "hi"])
  _one_paragraph(capsys, code, "run holds no checkpoint under")
