"""The seams of zoo.pretrained: the declared converter record, the one workdir reader, layering.

No torch here: the parity tests against transformers are in test_pretrained.py.
"""

import ast
import dataclasses
import pathlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import traverse_util

import zoo
from zoo.layers.stack import unscan_params
from zoo.models.gpt import GPTConfig
from zoo.pretrained import api, gpt2, workdir
from zoo.pretrained.converter import Converter, converters, of_module

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = dict(vocab_size=64, max_len=16, d_model=16, num_heads=2, num_layers=2, mlp_dim=32)


# ----------------------------------------------------------------------------------------------
# The converter record.


def _parts(record: Converter, *drop: str) -> dict:
  fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
  return {k: v for k, v in fields.items() if k not in drop}


def test_every_family_converter_declares_a_record_of_its_family():
  for family in zoo.registry.families():
    for conv in converters(family):
      assert isinstance(conv, Converter) and conv.config_cls is family.config_cls
      assert conv.model_types and set(conv.model_types) <= set(conv.architectures)
  archs = [a for conv in converters() for a in conv.architectures]
  assert len(archs) == len(set(archs)), "an architecture is claimed by two converters"


def test_a_missing_part_names_the_module_and_the_part():
  with pytest.raises(TypeError, match=r"^zoo\.pretrained\.gpt2: its Converter lacks entries, "
                                      r"describe; every converter provides config_cls, "):
    Converter(**_parts(gpt2.CONVERTER, "entries", "describe"))
  with pytest.raises(TypeError, match=r"zoo\.pretrained\.gpt2: Converter ignore=3 is not "
                                      r"callable; resize='x' is neither callable nor None"):
    Converter(**{**_parts(gpt2.CONVERTER), "ignore": 3, "resize": "x"})
  with pytest.raises(TypeError, match=r"model_types names \['BertModel'\], which are not among"):
    Converter(**{**_parts(gpt2.CONVERTER), "model_types": {"BertModel": "bert"}})


def test_defaults_of_the_optional_parts():
  conv = Converter(**_parts(gpt2.CONVERTER, "model_types", "head_params"))
  assert dict(conv.model_types) == {"GPT2LMHeadModel": "gpt2"}  # architectures[0]'s type
  assert conv.head_params == () and conv.resize is None and conv.implied_overrides is None
  assert conv.name == "gpt2" and not conv.writes(GPTConfig(**TINY))  # matches=None claims none


def test_a_module_without_a_record_or_of_another_family_is_named():
  gpt = zoo.registry.get("gpt")
  bare = types.ModuleType("zoo.pretrained.bare")
  with pytest.raises(TypeError, match=r"zoo\.pretrained\.bare \(named in the 'gpt' family's "
                                      r"converters\) defines no CONVERTER = "):
    of_module(bare, gpt)
  with pytest.raises(TypeError, match=r"zoo\.pretrained\.gpt2 .* converts GPTConfig, not the "
                                      r"family's BertConfig"):
    of_module(gpt2, zoo.registry.get("bert"))
  copied = types.ModuleType("zoo.pretrained.copy")
  copied.CONVERTER = gpt2.CONVERTER
  with pytest.raises(TypeError, match=r"zoo\.pretrained\.copy: its CONVERTER says "
                                      r"module='zoo\.pretrained\.gpt2'; pass module=__name__"):
    of_module(copied, gpt)


# ----------------------------------------------------------------------------------------------
# Layering: training sits above generate and pretrained.


@pytest.mark.parametrize("package", ["generate", "pretrained"])
def test_generate_and_pretrained_import_nothing_from_training(package):
  for path in sorted((ROOT / "zoo" / package).glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        names = [f"{node.module}.{a.name}" for a in node.names]
      else:
        continue
      for name in names:
        assert not name.startswith("zoo.training"), f"{path.name}:{node.lineno} imports {name}"


# ----------------------------------------------------------------------------------------------
# The workdir reader.


def _tree_equal(a, b):
  fa, fb = (traverse_util.flatten_dict(t, sep="/") for t in (a, b))
  assert sorted(fa) == sorted(fb)
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
  """A workdir with two checkpoints of a scanned GPT carrying trained (nonzero) LoRA adapters."""
  optax = pytest.importorskip("optax")
  from zoo.training import trainable
  from zoo.training.checkpoint import Checkpointer
  from zoo.training.state import TrainState

  model = zoo.build(GPTConfig(**TINY, scan_layers=True))
  boxed = model.init(jax.random.PRNGKey(0), np.zeros((1, 4), np.int32))["params"]
  lora = trainable.Trainable(lora_rank=2)
  params = nn.unbox(trainable.add_adapters(boxed, lora, jax.random.PRNGKey(1)))
  flat = traverse_util.flatten_dict(params, sep="/")
  for i, k in enumerate(k for k in flat if k.endswith("/lora_b")):  # as if trained
    flat[k] = jax.random.normal(jax.random.PRNGKey(2 + i), flat[k].shape)
  params = traverse_util.unflatten_dict(flat, sep="/")
  root = tmp_path_factory.mktemp("run")
  tx = optax.sgd(0.1)
  state = TrainState(step=jnp.array(0), params=params, opt_state=tx.init(params),
                     apply_fn=model.apply, tx=tx)
  ckpt = Checkpointer(str(root), every=1, keep=5, fingerprint={},
                      model_config=zoo.registry.config_to_json(model.config))
  for step in (3, 5):
    ckpt.save(step, state, rng=jax.random.PRNGKey(0), force=True)
  ckpt.close()
  merged = trainable.merge_adapters(params)
  kernel = "decoder/layers/attn/query/kernel"
  before, after = (traverse_util.flatten_dict(t, sep="/")[kernel] for t in (params, merged))
  assert not np.allclose(before, after)  # the adapters change what a reader must give
  return root, model, params, merged


def test_both_readers_are_the_one_reader_and_leave_the_workdir_as_it_was(lora_run):
  from zoo.generate import cli

  root, model, params, merged = lora_run
  checkpoints = root / workdir.CHECKPOINTS
  # What a run still writing (an Orbax temporary folder) or deleting (the trash) leaves there.
  (checkpoints / "7.orbax-checkpoint-tmp-123").mkdir()
  (checkpoints / workdir.TRASH / "1").mkdir(parents=True)
  assert workdir.is_workdir(root) and workdir.complete_steps(str(checkpoints)) == [3, 5]

  ckpt = workdir.read(root)
  assert ckpt.step == 5 and ckpt.config == model.config and ckpt.where == f"{root} (step 5)"
  assert not any(k[-1].startswith("lora_") for k in traverse_util.flatten_dict(ckpt.params))
  _tree_equal(ckpt.params, merged)  # read back from Orbax: the merged tree

  loaded = cli.load(str(root), step=3)
  assert loaded.model == model
  _tree_equal(loaded.params, merged)
  weights = api.read_workdir(str(root))
  assert weights.config == GPTConfig(**TINY) and weights.where == f"{root} (step 5)"
  looped = unscan_params(jax.device_get(merged))
  _tree_equal(traverse_util.unflatten_dict(weights.flat, sep="/"), looped)

  assert (checkpoints / "7.orbax-checkpoint-tmp-123").is_dir()
  assert (checkpoints / workdir.TRASH / "1").is_dir()


def test_a_missing_or_damaged_step_names_the_good_ones(lora_run, tmp_path):
  root, *_ = lora_run
  with pytest.raises(workdir.DamagedCheckpointError,
                     match=r"step 4 .* does not exist; the nearest good step is 5"):
    workdir.read(root, 4)
  (tmp_path / workdir.CHECKPOINTS).mkdir()
  with pytest.raises(FileNotFoundError, match=r"holds no checkpoint under .*checkpoint_every"):
    workdir.read(tmp_path)
