"""Seq2seq decoding options (``forced_bos_id``, ``forced_eos``, ``min_length``,
``no_repeat_ngram_size``) equal transformers' ``generate`` token for token on a tiny random
BART, greedy and beam search, and each option changes what is decoded."""

import numpy as np
import pytest
from test_bart import EOS, PAD, hf_model

import zoo
from zoo import generate as zg

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SOURCES = [[5, 6, 7, 8, 9, 10, 11, 12, EOS], [13, 14, EOS], [15, 16, 17, 18, 19, EOS]]
NEW = 10
BOS = 0
OPTIONS = {  # name -> (zoo keyword arguments, transformers' generate keyword arguments)
    "none": ({}, {}),
    "no_repeat_ngram": ({"no_repeat_ngram_size": 2}, {"no_repeat_ngram_size": 2}),
    "min_length": ({"min_length": 7}, {"min_length": 7}),
    "forced_bos": ({"forced_bos_id": BOS}, {"forced_bos_token_id": BOS}),
    "forced_eos": ({"forced_eos": True}, {"forced_eos": True}),  # forced_eos_token_id = EOS
    "all": ({"no_repeat_ngram_size": 2, "min_length": 5, "forced_bos_id": BOS,
             "forced_eos": True}, {"no_repeat_ngram_size": 2, "min_length": 5,
                                   "forced_bos_token_id": BOS, "forced_eos": True}),
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
  hf = hf_model("BartForConditionalGeneration", seed=2)
  path = tmp_path_factory.mktemp("bartgen")
  hf.save_pretrained(str(path))
  model, params = zoo.from_pretrained(path)
  free = zg.translate_ids(model, params, SOURCES, max_new_tokens=NEW, decoder_start_id=EOS,
                          eos_id=None).tolist()
  # An EOS that ends some greedy rows early, so that min_length and forced EOS matter.
  counts = {t: sum(t in r[1:4] for r in free) for r in free for t in r[1:4]}
  eos = max(sorted(counts), key=lambda t: counts[t])
  return hf, model, params, eos, free


def _hf_generate(hf, eos, beams, options):
  opts = dict(options)
  if opts.pop("forced_eos", False):
    opts["forced_eos_token_id"] = eos
  hf.generation_config = transformers.GenerationConfig(
      decoder_start_token_id=EOS, pad_token_id=PAD, eos_token_id=eos)
  ids = np.full((len(SOURCES), max(map(len, SOURCES))), PAD)
  for i, s in enumerate(SOURCES):
    ids[i, : len(s)] = s
  with torch.no_grad():
    out = hf.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(ids != PAD),
                      do_sample=False, num_beams=beams, max_new_tokens=NEW, **opts)
  return out.numpy()[:, 1:].tolist()  # without the decoder start token


def _until_eos(rows, eos):
  return [r[: r.index(eos) + 1] if eos in r else r for r in rows]


@pytest.mark.parametrize("beams", [1, 3])
def test_decoding_options_equal_hf_generate_and_matter(pair, beams):
  hf, model, params, eos, free = pair
  assert len({tuple(r) for r in free}) > 1
  outputs = {}
  names = list(OPTIONS) if beams == 1 else ["none", "no_repeat_ngram", "all"]
  for name in names:
    ours_kw, hf_kw = OPTIONS[name]
    ours = zg.translate_ids(model, params, SOURCES, max_new_tokens=NEW, decoder_start_id=EOS,
                            eos_id=eos, num_beams=beams, **ours_kw).tolist()
    ref = _hf_generate(hf, eos, beams, hf_kw)
    assert _until_eos(ours, eos) == [r[: len(o)] for r, o in
                                     zip(ref, _until_eos(ours, eos), strict=True)], name
    outputs[name] = _until_eos(ours, eos)
  for name in names[1:]:
    assert outputs[name] != outputs["none"], name  # the option changed what was decoded
  if beams == 1:
    assert all(r[0] == BOS for r in outputs["forced_bos"])
    assert all(len(r) >= 6 for r in outputs["min_length"])  # 7 with the start token
    assert any(eos not in r for r in outputs["none"])  # forced EOS had a row to end
    assert all(r[-1] == eos for r in outputs["forced_eos"])


def test_cli_decodes_with_the_checkpoints_generation_config_like_transformers(
    pair, tmp_path, capsys):
  """generation_config.json's options reach zoo's decoding (as transformers' generate reads
  them), and a convert to zoo and back carries the file."""
  from zoo.generate import cli
  from zoo.pretrained import __main__ as convert_cli

  hf, _, _, eos, _ = pair
  settings = dict(decoder_start_token_id=EOS, pad_token_id=PAD, eos_token_id=eos, num_beams=2,
                  no_repeat_ngram_size=2, min_length=4, forced_bos_token_id=BOS,
                  forced_eos_token_id=eos, max_length=9, early_stopping=True)
  hf.generation_config = transformers.GenerationConfig(**settings)
  hf.save_pretrained(str(tmp_path / "hf"))
  src = SOURCES[0]
  with torch.no_grad():
    ref = hf.generate(input_ids=torch.tensor([src])).numpy()[0, 1:].tolist()
  want = ref[: ref.index(eos)] if eos in ref else ref

  convert_cli.convert(str(tmp_path / "hf"), str(tmp_path / "zoo"))
  convert_cli.convert(str(tmp_path / "zoo"), str(tmp_path / "back"))
  saved = transformers.GenerationConfig.from_pretrained(str(tmp_path / "back"))
  assert {k: getattr(saved, k) for k in settings} == settings
  for folder in ("hf", "back"):
    capsys.readouterr()
    assert cli.main(["--checkpoint", str(tmp_path / folder), "--source_ids",
                     ",".join(map(str, src))]) == 0
    assert capsys.readouterr().out.split() == [str(t) for t in want], folder
  assert want[0] == BOS and len(ref) <= 8
  other = next(t for t in range(4, 90) if t not in (eos, want[0]))  # e.g. a target language
  assert cli.main(["--checkpoint", str(tmp_path / "hf"), "--source_ids", ",".join(map(str, src)),
                   "--forced_bos_id", str(other)]) == 0
  assert capsys.readouterr().out.split()[0] == str(other)
