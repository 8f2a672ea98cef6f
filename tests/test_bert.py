"""BERT: Hugging Face reference, padding, packing, scan/remat/jit equivalence, heads, bad input."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

import zoo
from zoo.layers.stack import scan_params
from zoo.models.bert import Bert, BertConfig

TINY = dict(
    vocab_size=97, max_len=16, type_vocab_size=2, d_model=32, num_heads=4, num_layers=2,
    mlp_dim=64,
)
V, D = TINY["vocab_size"], TINY["d_model"]


def tiny(**kw) -> Bert:
  return Bert(BertConfig(**{**TINY, **kw}))


# CPU budget: once each primitive is compiled for a shape, a tiny eager forward costs ~0.1 s
# where compiling it under jit costs ~2 s, so the tests run eagerly on two input shapes,
# [2, 12] and [2, 16], and jit only repeated steps. Parameters are drawn with numpy from the
# shapes: the random initialisers alone would compile for 5-10 s.
def init(model, ids, seed=0):
  """Random params of ``model``'s tree: norm scales ~ 1 + N(0, 0.1), everything else N(0, 0.1)."""
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.PRNGKey(0), ids)["params"])
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    x = rng.normal(0.0, 0.1, leaf.shape) + (jax.tree_util.keystr(path).endswith("['scale']"))
    return jnp.asarray(x, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def run(model, params, ids, **kw):
  return model.apply({"params": params}, ids, **kw)


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  ids = jnp.asarray(rng.integers(1, V, (2, 12)), jnp.int32)
  types = jnp.asarray(np.repeat([[0] * 7 + [1] * 5], 2, axis=0), jnp.int32)
  return ids, types


@pytest.fixture(scope="module")
def pretraining(batch):
  model = tiny(head="pretraining")
  return model, init(model, batch[0])


def close(a, b, atol=1e-5):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=atol)


# ----------------------------------------------------------------------------------------------
# An independent reference: Hugging Face BertForPreTraining (PyTorch), random local weights.


def hf_to_zoo(sd: dict, num_layers: int, num_heads: int) -> dict:
  """Hugging Face BERT state dict (numpy) -> zoo param tree (draft of the converter's map)."""

  def linear(p):
    return {"kernel": sd[f"{p}.weight"].T, "bias": sd[f"{p}.bias"]}

  def norm(p):
    return {"scale": sd[f"{p}.weight"], "bias": sd[f"{p}.bias"]}

  def heads_in(p):  # Linear [N*H, D] -> kernel [D, N, H], bias [N, H]
    w, b = sd[f"{p}.weight"], sd[f"{p}.bias"]
    return {"kernel": w.T.reshape(w.shape[1], num_heads, -1), "bias": b.reshape(num_heads, -1)}

  def heads_out(p):  # Linear [D, N*H] -> kernel [N, H, D]
    w = sd[f"{p}.weight"]
    return {"kernel": w.T.reshape(num_heads, -1, w.shape[0]), "bias": sd[f"{p}.bias"]}

  e = "bert.embeddings"
  tree = {
      "embeddings": {
          "word_embeddings": {"embedding": sd[f"{e}.word_embeddings.weight"]},
          "position_embeddings": {"embedding": sd[f"{e}.position_embeddings.weight"]},
          "token_type_embeddings": {"embedding": sd[f"{e}.token_type_embeddings.weight"]},
          "norm": norm(f"{e}.LayerNorm"),
      },
      "encoder": {},
      "pooler": linear("bert.pooler.dense"),
      "mlm": {
          "transform": linear("cls.predictions.transform.dense"),
          "norm": norm("cls.predictions.transform.LayerNorm"),
          "bias": sd["cls.predictions.bias"],
      },
      "nsp": linear("cls.seq_relationship"),
  }
  for i in range(num_layers):
    p = f"bert.encoder.layer.{i}"
    tree["encoder"][f"layers_{i}"] = {
        "attn": {
            "query": heads_in(f"{p}.attention.self.query"),
            "key": heads_in(f"{p}.attention.self.key"),
            "value": heads_in(f"{p}.attention.self.value"),
            "out": heads_out(f"{p}.attention.output.dense"),
        },
        "attn_norm": norm(f"{p}.attention.output.LayerNorm"),
        "mlp": {"wi": linear(f"{p}.intermediate.dense"), "wo": linear(f"{p}.output.dense")},
        "mlp_norm": norm(f"{p}.output.LayerNorm"),
    }
  return tree


def test_matches_hugging_face_bert_for_pretraining(batch):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  hf_cfg = transformers.BertConfig(
      vocab_size=V, hidden_size=D, num_hidden_layers=TINY["num_layers"],
      num_attention_heads=TINY["num_heads"], intermediate_size=TINY["mlp_dim"],
      max_position_embeddings=TINY["max_len"], type_vocab_size=2, hidden_act="gelu",
      layer_norm_eps=1e-12, pad_token_id=0,
  )
  hf = transformers.BertForPreTraining(hf_cfg).eval()
  with torch.no_grad():  # zero biases and unit norms would hide swapped or missing ones
    for p in hf.parameters():
      p.add_(0.1 * torch.randn_like(p))
  sd = {k: v.detach().numpy() for k, v in hf.state_dict().items()}

  model = tiny(head="pretraining")
  ids, types = batch
  ids = np.asarray(ids).copy()
  ids[1, 8:] = 0  # padding in the second row
  mask = ids != 0
  ref_tree = init(model, jnp.asarray(ids))
  params = hf_to_zoo(sd, TINY["num_layers"], TINY["num_heads"])
  assert jax.tree.structure(params) == jax.tree.structure(ref_tree)
  for (path, a), b in zip(
      jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(ref_tree), strict=True
  ):
    assert a.shape == b.shape, (jax.tree_util.keystr(path), a.shape, b.shape)

  out = run(model, params, jnp.asarray(ids), token_type_ids=types, attention_mask=mask)
  with torch.no_grad():
    ref = hf(
        input_ids=torch.as_tensor(ids, dtype=torch.long),
        token_type_ids=torch.as_tensor(np.array(types), dtype=torch.long),
        attention_mask=torch.as_tensor(mask, dtype=torch.long),
        output_hidden_states=True,
    )
  real = mask[..., None]
  close(out["last_hidden_state"] * real, ref.hidden_states[-1].numpy() * real, atol=1e-4)
  close(out["mlm_logits"] * real, ref.prediction_logits.numpy() * real, atol=1e-4)
  close(out["nsp_logits"], ref.seq_relationship_logits.numpy(), atol=1e-4)


# ----------------------------------------------------------------------------------------------
# Properties.


def test_padding_is_invisible_to_real_positions(pretraining, batch):
  model, params = pretraining
  ids, types = batch
  ref = run(model, params, ids, token_type_ids=types)
  n, extra = ids.shape[1], 4
  fill = jnp.full((2, extra), 0, jnp.int32)
  ptypes = jnp.concatenate([types, jnp.ones_like(fill)], axis=1)
  mask = jnp.broadcast_to(jnp.arange(n + extra) < n, (2, n + extra))
  padded = jnp.concatenate([ids, fill], axis=1)  # pad_id: the default mask hides it
  garbage = jnp.concatenate([ids, fill + 42], axis=1)  # real tokens, hidden by the mask
  for inputs, attention_mask in ((padded, None), (garbage, mask)):
    out = run(model, params, inputs, token_type_ids=ptypes, attention_mask=attention_mask)
    close(out["last_hidden_state"][:, :n], ref["last_hidden_state"])
    close(out["mlm_logits"][:, :n], ref["mlm_logits"])
    close(out["pooled"], ref["pooled"])
    close(out["nsp_logits"], ref["nsp_logits"])
  # The check can fail: unmasked, the same filler does change the real positions.
  unmasked = run(model, params, garbage, token_type_ids=ptypes, attention_mask=mask | True)
  assert np.abs(unmasked["last_hidden_state"][:, :n] - ref["last_hidden_state"]).max() > 1e-3


def test_packed_rows_equal_separate_rows(pretraining, batch):
  model, params = pretraining
  ids, _ = batch
  a, b = ids[0, :5], ids[1, :7]
  ta, tb = jnp.array([0, 0, 0, 1, 1]), jnp.array([0, 0, 0, 0, 1, 1, 1])
  z5, z7 = jnp.zeros(5, jnp.int32), jnp.zeros(7, jnp.int32)
  # Separately: one sequence per row, padded. Packed: both in row 0 (positions restart per
  # segment by default), row 1 is a third sequence with its own segment id.
  alone = run(
      model, params, jnp.stack([jnp.concatenate([a, z7]), jnp.concatenate([b, z5])]),
      token_type_ids=jnp.stack([jnp.concatenate([ta, z7]), jnp.concatenate([tb, z5])]),
  )
  packed_ids = jnp.stack([jnp.concatenate([a, b]), ids[1]])
  packed_types = jnp.stack([jnp.concatenate([ta, tb]), jnp.zeros(12, jnp.int32)])
  seg = jnp.array([[1] * 5 + [2] * 7, [1] * 12])
  out = run(model, params, packed_ids, token_type_ids=packed_types, segment_ids=seg)
  for key in ("last_hidden_state", "mlm_logits"):
    close(out[key][0, :5], alone[key][0, :5])
    close(out[key][0, 5:], alone[key][1, :7])
  close(out["pooled"][0], alone["pooled"][0])  # the row's [CLS] is the first segment's
  # Without segment ids the two sequences see each other.
  mixed = run(
      model, params, packed_ids, token_type_ids=packed_types,
      positions=jnp.array([list(range(5)) + list(range(7)), list(range(12))]),
  )
  assert np.abs(mixed["last_hidden_state"][0, :5] - alone["last_hidden_state"][0, :5]).max() > 1e-3


def test_jit_equals_no_jit(pretraining, batch):
  model, params = pretraining
  ids, types = batch
  eager = model.apply({"params": params}, ids, token_type_ids=types)
  jitted = jax.jit(lambda p, i, t: model.apply({"params": p}, i, token_type_ids=t))(
      params, ids, types
  )
  for key in eager:
    close(eager[key], jitted[key])


def test_scan_equals_loop_and_remat_equals_plain(pretraining, batch):
  model, params = pretraining
  ids, types = batch
  ref = run(model, params, ids, token_type_ids=types)
  scanned = tiny(head="pretraining", scan_layers=True)
  out = run(scanned, scan_params(params), ids, token_type_ids=types)
  for key in ref:
    close(out[key], ref[key])

  def outputs_and_grads(m):
    # One pass for both: the VJP with the outputs as cotangent is the gradient of sum(out^2)/2.
    out, vjp = jax.vjp(lambda p: m.apply({"params": p}, ids, token_type_ids=types), params)
    return out, vjp(out)[0]

  out_ref, g_ref = outputs_and_grads(model)
  out, g = outputs_and_grads(tiny(head="pretraining", remat_policy="full"))
  for a, b in zip(jax.tree.leaves((out, g)), jax.tree.leaves((out_ref, g_ref)), strict=True):
    close(a, b, atol=1e-6)
  assert np.abs(np.asarray(g["encoder"]["layers_0"]["attn"]["query"]["kernel"])).max() > 0


@pytest.mark.parametrize(
    "head,extra",
    [
        ("none", {}),
        ("pretraining", {"mlm_logits": (2, 12, V), "nsp_logits": (2, 2)}),
        ("mlm", {"mlm_logits": (2, 12, V)}),
        ("sequence_classification", {"logits": (2, 3)}),
        ("token_classification", {"logits": (2, 12, 3)}),
    ],
)
def test_every_head_shapes_dtypes_and_param_count(batch, head, extra):
  ids, types = batch
  dtype = jnp.bfloat16 if head == "pretraining" else jnp.float32  # one bf16 run is enough
  model = tiny(head=head, num_labels=3, dtype=dtype)
  params = init(model, ids)
  out = run(model, params, ids, token_type_ids=types)
  assert set(out) == {"last_hidden_state", "pooled", *extra}
  assert out["last_hidden_state"].shape == (2, 12, D)
  assert out["pooled"].shape == (2, D)
  assert out["last_hidden_state"].dtype == out["pooled"].dtype == dtype
  for key, shape in extra.items():
    assert out[key].shape == shape and out[key].dtype == jnp.float32, key
    assert np.isfinite(np.asarray(out[key])).all()
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))  # param_dtype

  # Parameter count against the closed-form formula (HF BertModel layout).
  L, F, P, T, C = TINY["num_layers"], TINY["mlp_dim"], TINY["max_len"], 2, 3
  layer = 4 * (D * D + D) + (D * F + F) + (F * D + D) + 2 * 2 * D
  expected = (V + P + T) * D + 2 * D + L * layer + D * D + D  # embeddings, encoder, pooler
  expected += {
      "none": 0,
      "pretraining": (D * D + D) + 2 * D + V + (2 * D + 2),  # tied decoder: no [V, D] kernel
      "mlm": (D * D + D) + 2 * D + V,
      "sequence_classification": D * C + C,
      "token_classification": D * C + C,
  }[head]
  assert zoo.param_count(model) == expected


def test_mlm_decoder_is_the_word_embedding_table(pretraining, batch):
  model, params = pretraining
  ids, types = batch
  ids = jnp.minimum(ids, 40)  # tokens 41.. never enter the model as inputs
  ref = run(model, params, ids, token_type_ids=types)["mlm_logits"]
  delta = jax.random.normal(jax.random.PRNGKey(1), (D,))
  table = params["embeddings"]["word_embeddings"]["embedding"]

  def with_table(t):
    return {**params, "embeddings": {**params["embeddings"], "word_embeddings": {"embedding": t}}}

  out = run(model, with_table(table.at[90].add(delta)), ids, token_type_ids=types)["mlm_logits"]
  diff = np.abs(np.asarray(out - ref))
  # Row 90 is only read by the decoder, and only for output column 90.
  assert diff[..., 90].min() > 1e-4
  assert np.delete(diff, 90, axis=-1).max() == 0.0
  # And the gradient of that logit flows into the table row.
  g = jax.grad(
      lambda t: run(model, with_table(t), ids, token_type_ids=types)["mlm_logits"][..., 90].sum()
  )(table)
  assert np.abs(np.asarray(g[90])).sum() > 0


def test_positions_variants_and_pre_ln(batch):
  ids, types = batch
  # max_len=8 < 12: without a learned table, longer inputs are fine.
  for kw in (dict(position="rope", max_len=8), dict(position="sinusoidal", max_len=8)):
    model = tiny(**kw)
    params = init(model, ids)
    assert "position_embeddings" not in params["embeddings"]
    out = run(model, params, ids)
    assert np.isfinite(np.asarray(out["last_hidden_state"])).all()
  model = tiny(norm_position="pre")
  params = init(model, ids)
  assert "final_norm" in params
  params["final_norm"] = {"scale": jnp.ones(D), "bias": jnp.zeros(D)}
  out = run(model, params, ids, token_type_ids=types)["last_hidden_state"]
  close(out.mean(-1), np.zeros((2, 12)), atol=1e-4)  # the final LayerNorm's output
  close(out.std(-1), np.ones((2, 12)), atol=1e-3)


def test_dropout_is_active_only_when_not_deterministic(pretraining, batch):
  model, params = pretraining
  ids, types = batch
  base = run(model, params, ids, token_type_ids=types)["nsp_logits"]
  noisy = lambda seed: run(  # noqa: E731
      model, params, ids, token_type_ids=types, deterministic=False,
      rngs={"dropout": jax.random.PRNGKey(seed)},
  )["nsp_logits"]
  assert np.abs(np.asarray(noisy(0) - base)).max() > 1e-4
  assert np.abs(np.asarray(noisy(0) - noisy(1))).max() > 1e-4
  close(noisy(0), noisy(0), atol=0)


def test_tiny_bert_overfits_one_batch():
  model = tiny(head="pretraining", num_layers=1, dropout_rate=0.0, attention_dropout_rate=0.0)
  rng = np.random.default_rng(0)
  targets = rng.integers(5, V, (4, 12))
  selected = rng.random((4, 12)) < 0.3
  selected[:, 1] = True
  ids = jnp.asarray(np.where(selected, 4, targets), jnp.int32)  # 4 plays [MASK]
  targets, weights = jnp.asarray(targets), jnp.asarray(selected, jnp.float32)
  types = jnp.asarray(np.repeat([[0] * 6 + [1] * 6], 4, axis=0), jnp.int32)
  nsp = jnp.array([0, 1, 1, 0])
  params = init(model, ids)
  opt = optax.adam(3e-3)
  opt_state = opt.init(params)

  def loss_fn(p):
    out = model.apply({"params": p}, ids, token_type_ids=types)
    mlm = optax.softmax_cross_entropy_with_integer_labels(out["mlm_logits"], targets)
    mlm = (mlm * weights).sum() / weights.sum()
    return mlm + optax.softmax_cross_entropy_with_integer_labels(out["nsp_logits"], nsp).mean()

  @jax.jit
  def step(p, s):
    loss, g = jax.value_and_grad(loss_fn)(p)
    updates, s = opt.update(g, s, p)
    return optax.apply_updates(p, updates), s, loss

  first = None
  for _ in range(100):
    params, opt_state, loss = step(params, opt_state)
    first = float(loss) if first is None else first
  assert first > 4.0  # ~log(97) + log(2) at init
  assert float(loss) < 0.1 * first, (first, float(loss))


def test_bad_input_is_a_clear_value_error(pretraining, batch):
  model, params = pretraining
  ids, types = batch
  apply = lambda i, **kw: model.apply({"params": params}, i, **kw)  # noqa: E731
  with pytest.raises(ValueError, match=r"input_ids holds ids in \[.*97\].*97 entries"):
    apply(ids.at[0, 0].set(V))
  with pytest.raises(ValueError, match=r"ids in \[-1"):
    apply(ids.at[0, 0].set(-1))
  with pytest.raises(ValueError, match=r"token_type_ids holds ids in \[0, 2\].*2 entries"):
    apply(ids, token_type_ids=types.at[0, 0].set(2))
  with pytest.raises(ValueError, match="length 17 but the model's max_len is 16"):
    apply(jnp.ones((1, 17), jnp.int32))
  with pytest.raises(ValueError, match="length 17 but the model's max_len is 16"):
    jax.jit(apply)(jnp.ones((1, 17), jnp.int32))  # shapes are checked under jit too
  with pytest.raises(ValueError, match="rank 2"):
    apply(ids[0])
  with pytest.raises(ValueError, match=r"attention_mask must have the shape .*\(2, 12\)"):
    apply(ids, attention_mask=jnp.ones((2, 9), bool))
  with pytest.raises(ValueError, match=r"positions hold values in \[5, 16\].*max_len=16"):
    apply(ids, positions=jnp.broadcast_to(jnp.arange(5, 17), (2, 12)))
  # The same checks, registered with the family, need no model or parameters.
  validate = zoo.registry.get("bert").validate
  validate(model.config, {"input_ids": ids, "token_type_ids": types})
  with pytest.raises(ValueError, match=r"token_type_ids holds ids in \[0, 2\].*2 entries"):
    validate(model.config, {"input_ids": ids, "token_type_ids": types.at[0, 0].set(2)})
  with pytest.raises(ValueError, match="not divisible by num_heads=5"):
    BertConfig(**{**TINY, "num_heads": 5})
  with pytest.raises(ValueError, match="head must be one of"):
    BertConfig(**{**TINY, "head": "qa"})
  with pytest.raises(ValueError, match="position must be one of"):
    BertConfig(**{**TINY, "position": "alibi"})
  with pytest.raises(ValueError, match="classifier_dropout must be in"):
    BertConfig(**{**TINY, "classifier_dropout": 1.5})


def test_presets_build():
  cfg = zoo.get_config("bert-base", head="mlm")
  assert dataclasses.asdict(cfg)["d_model"] == 768 and cfg.norm_eps == 1e-12
  assert "bert-large" in zoo.list_models("bert")
