"""T5 decoding: ``zoo.generate.translate_ids`` (KV cache, greedy and beam search) equals
transformers' ``generate`` token for token on the same weights; the generate CLI on an exported
T5 folder with its SentencePiece tokenizer."""

import numpy as np
import pytest
from reference import randomize
from test_t5_pretrained import HF_SIZES, ZOO_SIZES, text_lines, train_spiece, zoo_params

import zoo
from zoo import generate as zg
from zoo.generate import cli, decoder
from zoo.models.t5 import T5, T5Config

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

PAD = 0  # T5's pad id, also its decoder start
SOURCES = [[5, 6, 7, 8, 9, 10, 11, 12, 1], [13, 14, 1], [15, 16, 17, 18, 19, 1]]
NEW = 10
# (num_beams, length_penalty, early_stopping); greedy first.
SEARCHES = [(1, 1.0, False), (2, 1.0, False), (3, 0.6, False), (3, 2.0, False), (2, 2.0, True),
            (3, 1.0, "never")]


def _hf_model(layout, seed):
  """A random T5 1.0 (relu, tied, scaled) or v1.1 (gated-gelu, untied lm_head, unscaled)."""
  if layout == "1.0":
    return randomize(transformers.T5ForConditionalGeneration(
        transformers.T5Config(feed_forward_proj="relu", **HF_SIZES)), seed)
  hf = randomize(transformers.T5ForConditionalGeneration(transformers.T5Config(
      feed_forward_proj="gated-gelu", tie_word_embeddings=False, **HF_SIZES)), seed)
  g = torch.Generator().manual_seed(seed)
  hf.lm_head.weight = torch.nn.Parameter(torch.randn(*hf.shared.weight.shape, generator=g) * 0.3)
  return hf.eval()


@pytest.fixture(scope="module", params=["1.0", "v1.1"])
def pair(request, tmp_path_factory):
  """``(layout, HF model, zoo model, zoo params)`` on the same weights. Random tied models
  tend to repeat one token; the 1.0 seed is one whose rows branch."""
  hf = _hf_model(request.param, seed=1 if request.param == "1.0" else 0)
  path = tmp_path_factory.mktemp("t5gen")
  hf.save_pretrained(str(path))
  model, params = zoo.from_pretrained(path)
  assert model.config.tie_word_embeddings == (request.param == "1.0")
  return request.param, hf, model, params


def _first_eos(rows, eos):
  return [r.index(eos) + 1 if eos in r else None for r in rows]


def _pick_eos(rows):
  """The token whose first occurrences end the most rows at the most different steps."""
  candidates = sorted({t for r in rows for t in r[:6]})
  score = lambda t: (len({n for n in _first_eos(rows, t) if n}), -t)  # noqa: E731
  return max(candidates, key=score)


def test_translate_ids_equals_hf_generate(pair):
  layout, hf, model, params = pair
  free = zg.translate_ids(model, params, SOURCES, max_new_tokens=NEW, decoder_start_id=PAD,
                          eos_id=None).tolist()
  eos = _pick_eos(free)
  # Greedy rows end at different steps (all three for v1.1; 1.0's repetitive rows: two).
  finished = {n for n in _first_eos(free, eos) if n}
  assert len(finished) >= (3 if layout == "v1.1" else 2), (free, eos)
  ids = np.full((len(SOURCES), max(map(len, SOURCES))), PAD)
  for i, s in enumerate(SOURCES):
    ids[i, : len(s)] = s
  searches = SEARCHES if layout == "v1.1" else SEARCHES[:2]
  lengths = set()
  for beams, penalty, early in searches:
    with torch.no_grad():
      ref = hf.generate(
          input_ids=torch.tensor(ids), attention_mask=torch.tensor(ids != PAD), do_sample=False,
          num_beams=beams, length_penalty=penalty, early_stopping=early, max_new_tokens=NEW,
          eos_token_id=eos, pad_token_id=PAD, decoder_start_token_id=PAD, use_cache=True,
      ).numpy()[:, 1:].tolist()  # drop the decoder start token
    ours = zg.translate_ids(
        model, params, SOURCES, max_new_tokens=NEW, decoder_start_id=PAD, eos_id=eos,
        num_beams=beams, length_penalty=penalty, early_stopping=early,
    ).tolist()
    # transformers' beam search fills finished rows with `pad_token_id or eos`, i.e. with EOS
    # when pad is 0 (T5); zoo pads with pad_id. Compare up to each row's EOS.
    ends = _first_eos(ours, eos)
    assert [r[:n] for r, n in zip(ours, ends)] == [r[:n] for r, n in zip(ref, ends)], (
        beams, penalty, early)
    assert all(n is None or n <= len(ref[0]) for n in ends)
    assert all(set(r[n:]) <= {PAD} for r, n in zip(ours, ends) if n)
    assert _first_eos(ref, eos) == ends
    lengths |= {n for n in ends if n}
  assert len(lengths) >= (4 if layout == "v1.1" else 2), lengths  # several lengths competed


def test_generate_cli_summarises_from_an_exported_folder(tmp_path, capsys):
  # One layer a side: the CLI's reading of the folder does not depend on depth.
  cfg = T5Config(**{**ZOO_SIZES, "vocab_size": 300, "num_encoder_layers": 1,
                    "num_decoder_layers": 1}, activation="gelu_tanh", gated_mlp=True,
                 tie_word_embeddings=False)
  model = T5(cfg)
  params = zoo_params(model, 1)
  zoo.save_pretrained(model, params, tmp_path)
  train_spiece(tmp_path, text_lines(), 200)  # 200 pieces + 100 sentinels = vocab 300
  text = "summarize: The converter reads the weights and the tokenizer of a folder."

  assert cli.main(["--checkpoint", str(tmp_path), "--source", text, "--max_new_tokens", "8"]) == 0
  printed = capsys.readouterr().out.rstrip("\n")

  tok = zoo.load_tokenizer(tmp_path)
  ids = tok.encode(text)
  assert ids[-1] == cfg.eos_id  # the source ends with </s>, as T5's tokenizer writes it
  out = zg.translate_ids(model, params, [ids], max_new_tokens=8, decoder_start_id=PAD,
                         eos_id=cfg.eos_id)
  want = tok.decode(decoder.until_eos(out[0], cfg.eos_id))
  assert want.strip() and printed == want
