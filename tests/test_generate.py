"""Decoding: cached == full-forward greedy, padding invariance, samplers, compile counts,
HF parity."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from reference import randomize

import zoo
from zoo import generate as zg
from zoo import registry
from zoo.generate import decoder, seq2seq
from zoo.generate.sampling import next_token
from zoo.models.gpt import GPT, GPTConfig
from zoo.models.transformer import Transformer, TransformerConfig

# An untied output layer: random tied tiny models tend to repeat one token, this one branches.
GPT_CFG = GPTConfig(
    vocab_size=61, max_len=32, d_model=32, num_heads=4, num_layers=2, mlp_dim=64,
    tie_embeddings=False,
)
PROMPTS = [[3, 1, 4, 1, 5, 9, 2, 6, 5, 3], [2, 7], [1, 8, 2, 8, 1]]
NEW = 7


def with_eos(tokens: list[int], eos: int, pad: int) -> list[int]:
  """The expected output when generation stops at the first ``eos``."""
  if eos not in tokens:
    return tokens
  cut = tokens.index(eos) + 1
  return tokens[:cut] + [pad] * (len(tokens) - cut)


@pytest.fixture(scope="module")
def gpt():
  model = GPT(GPT_CFG)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"])
  return model, params


def right_padded(rows, length, pad=0):
  ids = np.full((len(rows), length), pad, np.int32)
  for i, row in enumerate(rows):
    ids[i, : len(row)] = row
  return jnp.asarray(ids)


def greedy_by_full_forward(forward, prefixes, n, length):
  """Greedy decoding with a full forward over every sequence at each step (no cache).

  Rows are right-padded to one fixed ``length`` (one compilation): the model is causal, so
  the trailing filler cannot change the logits read at each row's last real token.
  """
  seqs = [list(p) for p in prefixes]
  for _ in range(n):
    logits = np.asarray(forward(right_padded(seqs, length)))
    for row, seq in enumerate(seqs):
      seq.append(int(np.argmax(logits[row, len(seq) - 1])))
  return [seq[len(p):] for seq, p in zip(seqs, prefixes)]


@pytest.fixture(scope="module")
def gpt_reference(gpt):
  model, params = gpt
  forward = jax.jit(lambda ids: model.apply({"params": params}, ids))
  return greedy_by_full_forward(forward, PROMPTS, NEW, max(map(len, PROMPTS)) + NEW)


def test_gpt_cached_batched_equals_uncached_alone(gpt, gpt_reference):
  # Three prompts of lengths 10, 2, 5 left-padded into one bucket of 16: each row must produce
  # the tokens of the prompt generated alone, without cache or padding.
  model, params = gpt
  out = zg.generate(model, params, PROMPTS, max_new_tokens=NEW)
  assert out.shape == (3, NEW) and out.dtype == np.int32
  assert out.tolist() == gpt_reference
  assert len({tuple(r) for r in gpt_reference}) == 3 and len(set(gpt_reference[0])) > 1

  # EOS: a token the first row emits mid-way stops every row at its first occurrence.
  eos, pad = gpt_reference[0][2], 0
  out = zg.generate(model, params, PROMPTS, max_new_tokens=NEW, eos_id=eos, pad_id=pad)
  assert out.tolist() == [with_eos(r, eos, pad) for r in gpt_reference]
  assert out[0, 3:].tolist() == [pad] * (NEW - 3)


def test_gpt_compiles_once_per_batch_bucket_and_length(gpt):
  model, params = gpt
  count = lambda: zg.TRACE_COUNTS["decoder"]  # noqa: E731
  start = count()
  first = zg.generate(model, params, [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]], max_new_tokens=5)
  assert count() == start + 1
  # Same batch size, bucket (8) and length; other prompts, EOS and pad values: no new program.
  zg.generate(model, params, [[7], [9, 9, 9, 9, 9, 9, 9, 9]], max_new_tokens=5, eos_id=3)
  zg.generate(model, params, [[5, 6], [1, 2]], max_new_tokens=5, pad_id=1)
  assert count() == start + 1
  # A prompt of 9 tokens moves to bucket 16: one more program, then reused.
  zg.generate(model, params, [[1] * 9, [2]], max_new_tokens=5)
  zg.generate(model, params, [[3] * 16, [4, 4]], max_new_tokens=5)
  assert count() == start + 2
  again = zg.generate(model, params, [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]], max_new_tokens=5)
  assert count() == start + 2 and np.array_equal(first, again)


def test_gpt_sampling_top_k1_is_greedy_and_seeded(gpt, gpt_reference):
  model, params = gpt
  kw = dict(max_new_tokens=NEW, do_sample=True, temperature=0.7)
  for seed in (0, 1):
    out = zg.generate(model, params, PROMPTS, top_k=1, seed=seed, **kw)
    assert out.tolist() == gpt_reference
  # top_k is traced: k=20 reuses the program; a seed fixes the samples, others change them.
  start = zg.TRACE_COUNTS["decoder"]
  a = zg.generate(model, params, PROMPTS, top_k=20, seed=3, **kw)
  b = zg.generate(model, params, PROMPTS, top_k=20, seed=3, **kw)
  others = [zg.generate(model, params, PROMPTS, top_k=20, seed=s, **kw) for s in (4, 5)]
  assert zg.TRACE_COUNTS["decoder"] == start
  assert np.array_equal(a, b)
  assert any(not np.array_equal(a, o) for o in others)
  assert not np.array_equal(a, np.asarray(gpt_reference))


def test_filters_match_hugging_face_warpers():
  torch = pytest.importorskip("torch")
  from transformers.generation import logits_process as lp

  logits = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (6, 50)) * 3.0, np.float32)
  for temperature, k, p in [(1.0, 5, 1.0), (0.5, 0, 0.9), (1.3, 10, 0.6), (1.0, 0, 0.3)]:
    ours = zg.filter_logits(jnp.asarray(logits), temperature, k, p)
    ref = torch.tensor(logits)
    ref = lp.TemperatureLogitsWarper(temperature)(None, ref)
    if k:
      ref = lp.TopKLogitsWarper(k)(None, ref)
    if p < 1.0:
      ref = lp.TopPLogitsWarper(p)(None, ref)
    kept_ref = np.isfinite(ref.numpy())
    kept = np.asarray(ours) > zg.sampling.FILTERED
    assert np.array_equal(kept, kept_ref), (temperature, k, p)
    np.testing.assert_allclose(np.asarray(ours)[kept], ref.numpy()[kept_ref], rtol=1e-6)


def test_top_p_samples_only_the_nucleus():
  # p = [.4, .25, .15, .1, .06, .04]: the mass before tokens 0..3 is 0, .4, .65, .8, so
  # top_p=0.75 keeps {0, 1, 2} (renormalised to .5, .3125, .1875).
  probs = np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04], np.float32)
  logits = jnp.asarray(np.log(probs)[None])
  keys = jax.random.split(jax.random.PRNGKey(0), 4000)

  @jax.jit
  def draw(keys, top_k, top_p):
    sample = lambda key: next_token(key, logits, 1.0, top_k, top_p, static=(True, True, True))
    return jax.vmap(sample)(keys)[:, 0]

  tokens = np.asarray(draw(keys, 0, 0.75))
  assert set(tokens.tolist()) == {0, 1, 2}
  np.testing.assert_allclose(np.bincount(tokens, minlength=6)[:3] / len(tokens),
                             [0.5, 0.3125, 0.1875], atol=0.03)
  assert set(np.asarray(draw(keys, 2, 0.9)).tolist()) == {0, 1}  # top-k first, then top-p
  assert set(np.asarray(draw(keys, 0, 0.3)).tolist()) == {0}
  assert np.array_equal(draw(keys, 0, 0.75), draw(keys, 0, 0.75))


def test_gpt_bad_input(gpt):
  model, params = gpt
  with pytest.raises(ValueError, match="context is 32"):
    zg.generate(model, params, [list(range(33))], max_new_tokens=1)
  with pytest.raises(ValueError, match="is empty"):
    zg.generate(model, params, [[1, 2], []], max_new_tokens=1)
  with pytest.raises(ValueError, match="empty batch"):
    zg.generate(model, params, [], max_new_tokens=1)
  with pytest.raises(ValueError, match="max_new_tokens <= 3"):
    zg.generate(model, params, [[1] * 30], max_new_tokens=10)
  with pytest.raises(ValueError, match="vocabulary has 61"):
    zg.generate(model, params, [[1, 61]], max_new_tokens=1)
  with pytest.raises(ValueError, match="temperature"):
    zg.generate(model, params, [[1]], max_new_tokens=1, do_sample=True, temperature=0.0)
  with pytest.raises(ValueError, match="top_p"):
    zg.generate(model, params, [[1]], max_new_tokens=1, do_sample=True, top_p=1.5)
  with pytest.raises(ValueError, match="max_new_tokens"):
    zg.generate(model, params, [[1]], max_new_tokens=0)


# ----------------------------------------------------------------------------------------------
# Encoder-decoder.

T_CFG = TransformerConfig(
    vocab_size=53, d_model=32, num_heads=4, num_encoder_layers=2, num_decoder_layers=2,
    mlp_dim=64, max_len=32, dropout_rate=0.0, tie_output=False,
)
SOURCES = [[5, 6, 7, 8, 9, 10, 2], [11, 12, 2], [13, 14, 15, 16, 17, 2]]
BOS, EOS = 1, 2


@pytest.fixture(scope="module")
def transformer():
  model = Transformer(T_CFG)
  ids = jnp.ones((1, 4), jnp.int32)
  return model, nn.unbox(model.init(jax.random.PRNGKey(0), ids, ids)["params"])


def test_transformer_greedy_cached_equals_uncached(transformer):
  model, params = transformer
  # Sources right-padded to 7 here, to the bucket of 8 inside generate.
  src = right_padded(SOURCES, max(map(len, SOURCES)), T_CFG.pad_id)
  forward = jax.jit(lambda tgt: model.apply({"params": params}, src, tgt))
  ref = greedy_by_full_forward(forward, [[BOS]] * len(SOURCES), NEW, NEW)
  assert len({tuple(r) for r in ref}) == 3
  kw = dict(max_new_tokens=NEW, decoder_start_id=BOS)
  assert seq2seq.generate(model, params, SOURCES, eos_id=None, **kw).tolist() == ref
  eos = ref[1][3]
  out = seq2seq.generate(model, params, SOURCES, eos_id=eos, **kw)
  assert out.tolist() == [with_eos(r, eos, T_CFG.pad_id) for r in ref]


def test_transformer_beam_search_scanned_equals_looped(transformer):
  # Beam reordering gathers cache rows along the batch axis found from the cache's shapes:
  # axis 0 for looped layers, axis 1 under nn.scan ([L, B, ...]). Both must agree.
  import dataclasses

  from zoo.layers.stack import scan_params

  model, params = transformer
  scanned = Transformer(dataclasses.replace(T_CFG, scan_layers=True))
  kw = dict(max_new_tokens=NEW, decoder_start_id=BOS, eos_id=EOS, num_beams=3)
  looped = seq2seq.generate(model, params, SOURCES, **kw)
  assert np.array_equal(looped, seq2seq.generate(scanned, scan_params(params), SOURCES, **kw))
  greedy = seq2seq.generate(model, params, SOURCES, **{**kw, "num_beams": 1})
  assert not np.array_equal(looped, greedy)  # the beams did change the result


def test_transformer_bad_input(transformer):
  model, params = transformer
  kw = dict(max_new_tokens=4, decoder_start_id=BOS, eos_id=EOS)
  with pytest.raises(ValueError, match="is empty"):
    seq2seq.generate(model, params, [[]], **kw)
  with pytest.raises(ValueError, match="context is 32"):
    seq2seq.generate(model, params, [[3] * 40], **kw)
  with pytest.raises(ValueError, match="max_new_tokens=40"):
    seq2seq.generate(model, params, [[3]], **{**kw, "max_new_tokens": 40})
  with pytest.raises(ValueError, match="num_beams"):
    seq2seq.generate(model, params, [[3]], num_beams=0, **kw)


# ----------------------------------------------------------------------------------------------
# Capabilities: what decodes is what a family registers, not its name or its config's fields.


def test_capabilities_give_the_lengths_the_positions_allow():
  lm = registry.causal_lm(GPT_CFG, "test")
  assert lm.context_length(GPT_CFG) == 32 and lm.vocab_size(GPT_CFG) == 61
  rope = dataclasses.replace(GPT_CFG, position="rope")
  assert lm.context_length(rope) is None and lm.longest_prompt(rope) == 32
  s2s = registry.seq2seq(Transformer(T_CFG), "test")
  assert (s2s.source_length(T_CFG), s2s.target_length(T_CFG)) == (32, 32)
  bart = dataclasses.replace(T_CFG, position="learned", position_offset=2)
  assert s2s.target_length(bart) == 30
  assert s2s.target_length(dataclasses.replace(T_CFG, position="rope")) is None
  assert (s2s.pad_id(T_CFG), s2s.source_vocab(T_CFG), s2s.target_vocab(T_CFG)) == (0, 53, 53)


@pytest.mark.parametrize("preset", ["bert-base", "vit-b16"])
def test_a_family_without_the_capability_is_refused_naming_those_with_it(preset):
  model = zoo.build(zoo.get_config(preset))  # no parameters: the refusal comes first
  family = registry.family_of(model)
  lms = [f.name for f in registry.families() if f.causal_lm is not None]
  encoder_decoders = [f.name for f in registry.families() if f.seq2seq is not None]
  assert lms and encoder_decoders and family.name not in lms + encoder_decoders
  for ask, use, offering in ((registry.causal_lm, "generate", lms),
                             (registry.seq2seq, "translate_ids", encoder_decoders)):
    with pytest.raises(ValueError) as e:
      ask(model, use)
    message = str(e.value)
    assert message.startswith(
        f"{use} decodes {' or '.join(offering)} models; got {type(model).__name__} "
        f"(family {family.name!r})"
    )
    assert all(name in message for name in lms + encoder_decoders), message
  lead = f"generate decodes {' or '.join(lms)} models; got {type(model).__name__}"
  with pytest.raises(ValueError, match="^" + lead):
    zg.generate(model, {}, [[1, 2]], max_new_tokens=2)
  with pytest.raises(ValueError, match="^" + lead.replace("generate decodes", "stream decodes")):
    next(zg.stream(model, {}, [[1, 2]], max_new_tokens=2))
  with pytest.raises(ValueError, match=f"^translate_ids decodes {' or '.join(encoder_decoders)}"):
    zg.translate_ids(model, {}, [[1, 2]], max_new_tokens=2, decoder_start_id=0, eos_id=1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PlainConfig:
  """An encoder-decoder config with none of the 2017 Transformer's position fields."""

  vocab: int
  width: int
  pad: int = 0

  def transformer(self) -> TransformerConfig:
    return dataclasses.replace(T_CFG, vocab_size=self.vocab, d_model=self.width, pad_id=self.pad)


class Plain(nn.Module):
  """The Transformer behind another config class and another decoder method name."""

  config: PlainConfig

  def setup(self):
    self.inner = Transformer(self.config.transformer())

  def __call__(self, src_ids, tgt_ids):
    return self.inner(src_ids, tgt_ids)

  def encode(self, src_ids):
    return self.inner.encode(src_ids)

  def step(self, tgt_ids, memory, src_ids, decode=False):
    return self.inner.decode(tgt_ids, memory, src_ids, decode=decode)


def _plain_cache(model, batch_size, num_slots):
  args = (jnp.zeros((batch_size, num_slots), jnp.int32),
          jnp.zeros((batch_size, 1, model.config.width)), jnp.zeros((batch_size, 1), jnp.int32))
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), *args, decode=True, method="step"))["cache"]
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _plain_step(model, params, cache, tgt_ids, memory, src_ids):
  logits, mutated = model.apply({"params": params, "cache": cache}, tgt_ids, memory, src_ids,
                                decode=True, method="step", mutable=["cache"])
  return logits, mutated["cache"]


PLAIN = registry.Family(
    name="plain_seq2seq",
    config_cls=PlainConfig,
    model_cls=Plain,
    dummy_inputs=lambda config: ((jnp.ones((1, 4), jnp.int32),) * 2, {}),
    train_flops=lambda config, params, shapes: {},
    tasks=(),
    inputs="source_target",
    seq2seq=registry.Seq2Seq(
        encode=lambda model, params, src: model.apply({"params": params}, src, method="encode"),
        decode_step=_plain_step,
        init_cache=_plain_cache,
        pad_id=lambda config: config.pad,
        source_vocab=lambda config: config.vocab,
        target_vocab=lambda config: config.vocab,
        source_length=lambda config: None,
        target_length=lambda config: None,
    ),
)


@pytest.fixture
def plain_family():
  registry.register(PLAIN)
  try:
    yield PLAIN
  finally:
    registry.unregister(PLAIN.name)


def test_any_registered_seq2seq_family_decodes_not_only_the_2017_transformer(
    transformer, plain_family
):
  # The proof that decoding reads the capability only: a family whose config has no
  # position / max_len / position_offset (nor src_vocab, pad_id ...) decodes exactly as the
  # Transformer it wraps, greedy and with beams.
  assert not {"position", "max_len", "position_offset", "pad_id"} & set(dir(PlainConfig))
  model, params = transformer
  plain = Plain(PlainConfig(vocab=T_CFG.vocab_size, width=T_CFG.d_model))
  assert registry.family_of(plain) is plain_family
  for beams in (1, 3):
    kw = dict(max_new_tokens=NEW, decoder_start_id=BOS, eos_id=EOS, num_beams=beams)
    expected = zg.translate_ids(model, params, SOURCES, **kw)
    assert np.array_equal(zg.translate_ids(plain, {"inner": params}, SOURCES, **kw), expected)


def test_unregister_forgets_a_family():
  registry.register(PLAIN)
  assert "plain_seq2seq" in registry.capable("seq2seq")
  assert registry.unregister("plain_seq2seq") is PLAIN
  assert "plain_seq2seq" not in [f.name for f in registry.families()]
  with pytest.raises(ValueError, match="is not a zoo model config"):
    registry.family_of(PlainConfig(vocab=3, width=8))


# ----------------------------------------------------------------------------------------------
# Hugging Face: random tiny PyTorch models built here, loaded with zoo.from_pretrained.

HF_V = 99
HF_PAD = HF_V - 1


def _hf():
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  transformers.logging.set_verbosity_error()
  return torch, transformers


def test_gpt2_greedy_matches_hugging_face(tmp_path):
  torch, transformers = _hf()
  import zoo

  cfg = transformers.GPT2Config(
      vocab_size=HF_V, n_positions=32, n_embd=16, n_layer=2, n_head=4, n_inner=32,
      bos_token_id=0, eos_token_id=0, tie_word_embeddings=False,
  )
  hf = randomize(transformers.GPT2LMHeadModel(cfg), seed=0, std=0.3)
  hf.save_pretrained(tmp_path)
  model, params = zoo.from_pretrained(tmp_path)
  n = 8
  ours = zg.generate(model, params, PROMPTS, max_new_tokens=n, pad_id=HF_PAD)
  eos = int(ours[2, 3])  # a token the third row emits after 3 others: rows stop at their first
  ours = zg.generate(model, params, PROMPTS, max_new_tokens=n, eos_id=eos, pad_id=HF_PAD)
  assert (ours == HF_PAD).any() and len(set(ours[:, 0].tolist())) > 1

  length = max(map(len, PROMPTS))
  ids = np.full((len(PROMPTS), length), HF_PAD)
  mask = np.zeros_like(ids)
  for i, p in enumerate(PROMPTS):
    ids[i, length - len(p):], mask[i, length - len(p):] = p, 1
  with torch.no_grad():
    ref = hf.generate(
        input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
        num_beams=1, max_new_tokens=n, eos_token_id=eos, pad_token_id=HF_PAD,
    ).numpy()[:, length:]
  assert ours[:, : ref.shape[1]].tolist() == ref.tolist()
  assert (ours[:, ref.shape[1]:] == HF_PAD).all()


def test_marian_beam_search_matches_hugging_face(tmp_path):
  torch, transformers = _hf()
  import zoo

  eos = 0
  cfg = transformers.MarianConfig(
      vocab_size=HF_V, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
      decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=32,
      max_position_embeddings=32, pad_token_id=HF_PAD, decoder_start_token_id=HF_PAD,
      eos_token_id=eos, activation_function="swish", scale_embedding=True,
  )
  hf = randomize(transformers.MarianMTModel(cfg), seed=5, std=0.3)
  with torch.no_grad():
    hf.final_logits_bias[0, eos] += 2.0  # EOS likely enough that beams finish at many lengths
  hf.save_pretrained(tmp_path)
  model, params = zoo.from_pretrained(tmp_path)

  sources = [[5, 6, 7, 8, 9, 10, 11, 12, eos], [13, 14, eos], [15, 16, 17, 18, 19, eos]]
  ids = np.full((3, 9), HF_PAD)
  for i, s in enumerate(sources):
    ids[i, : len(s)] = s
  n = 10
  lengths = set()
  start = zg.TRACE_COUNTS["seq2seq"]
  # Opus-MT's generation settings: pad never generated, EOS forced at the last position.
  # With penalty 2 the default rule (False) stops before "never" would, and they differ here.
  for penalty, early in [(1.0, False), (0.6, False), (2.0, False), (2.0, "never"), (1.0, True)]:
    with torch.no_grad():
      ref = hf.generate(
          input_ids=torch.tensor(ids), attention_mask=torch.tensor(ids != HF_PAD),
          do_sample=False, num_beams=4, length_penalty=penalty, early_stopping=early,
          max_new_tokens=n, bad_words_ids=[[HF_PAD]], forced_eos_token_id=eos,
          no_repeat_ngram_size=0, num_return_sequences=1,
      ).numpy()[:, 1:]  # drop the decoder start token
    ours = seq2seq.generate(
        model, params, sources, max_new_tokens=n, decoder_start_id=HF_PAD, eos_id=eos,
        num_beams=4, length_penalty=penalty, early_stopping=early, suppress_ids=(HF_PAD,),
        forced_eos=True,
    )
    assert ours[:, : ref.shape[1]].tolist() == ref.tolist(), (penalty, early)
    assert (ours[:, ref.shape[1]:] == HF_PAD).all()
    lengths |= {row.index(eos) + 1 for row in ours.tolist()}
  assert len(lengths) >= 3, lengths  # hypotheses of several lengths competed
  assert zg.TRACE_COUNTS["seq2seq"] == start + 1  # penalty and stopping rule are traced


# ----------------------------------------------------------------------------------------------
# The command.


def test_cli_workdir_checkpoint_and_missing_tokenizer(gpt, tmp_path, capsys):
  optax = pytest.importorskip("optax")
  import ml_collections

  import zoo
  import zoo.data
  from zoo.generate import cli
  from zoo.training import config as config_lib
  from zoo.training.checkpoint import Checkpointer
  from zoo.training.state import TrainState

  model, params = gpt
  # A train.py workdir: an Orbax checkpoint with the model's config (byte tokenizer).
  tx = optax.sgd(0.1)
  state = TrainState(step=jnp.array(3), params=params, opt_state=tx.init(params),
                     apply_fn=model.apply, tx=tx)
  ckpt = Checkpointer(str(tmp_path), every=1, keep=1,
                      fingerprint=config_lib.fingerprint(model.config, "lm"),
                      model_config=zoo.registry.config_to_json(model.config))
  ckpt.save(3, state, rng=jax.random.PRNGKey(0), force=True)
  ckpt.close()
  run = ml_collections.ConfigDict({"data": zoo.data.default_config("lm")})
  run.data.update(tokenizer="byte")

  loaded = cli.load(str(tmp_path), config=run)
  assert loaded.model == model and loaded.eos_id == 2 and loaded.bos_id == 1
  text = cli.complete(loaded, "(#", max_new_tokens=6)
  tok = loaded.tokenizer
  ids = [tok.bos_id] + tok.encode("(#")
  new = zg.generate(model, params, [ids], max_new_tokens=6, eos_id=tok.eos_id, pad_id=tok.pad_id)
  assert text == tok.decode(ids[1:] + decoder.until_eos(new[0], tok.eos_id))

  with pytest.raises(ValueError, match="prompt is empty"):
    cli.complete(loaded, "", max_new_tokens=2)
  with pytest.raises(ValueError, match="context is 32"):
    cli.complete(loaded, "(" * 40, max_new_tokens=2)  # byte ids must stay < 61
  with pytest.raises(ValueError, match="needs an encoder-decoder"):
    cli.translate(loaded, "x")
  # Without the run config there is no tokenizer: text is refused, ids work.
  assert cli.main(["--checkpoint", str(tmp_path), "--prompt", "hello"]) == 2
  assert "has no tokenizer" in capsys.readouterr().err
  ids_text = ",".join(map(str, ids))
  assert cli.main(["--checkpoint", str(tmp_path), "--prompt_ids", ids_text,
                   "--max_new_tokens", "6"]) == 0
  printed = [int(t) for t in capsys.readouterr().out.split()]
  assert printed == ids + decoder.until_eos(new[0], tok.eos_id)
