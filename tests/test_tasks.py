"""Tasks as registered records: every task found through the registry, and a task that exists
only in this file trains through zoo.data and the one loop without any other module knowing it."""

import numpy as np
import pytest

import zoo.data as zd
from zoo import registry
from zoo.tasks import Task
from zoo.tasks.lm import LanguageModeling
from zoo.training import config as config_lib
from zoo.training import loop


@pytest.mark.parametrize("name", registry.task_names())
def test_every_registered_task_owns_its_data_keys(name):
  task = registry.task(name)
  assert isinstance(task, Task) and task.name == name
  cfg = zd.default_config(name)
  assert cfg.task == name
  assert set(task.data_defaults()) <= set(cfg.keys())  # the record's keys, and nobody else's
  assert task.loss_terms and task.unit in ("tokens", "images")


def test_unknown_task_and_bad_label_smoothing_name_the_value_and_the_choices():
  with pytest.raises(ValueError, match="unknown task 'lmm'. Did you mean lm"):
    registry.task("lmm")
  with pytest.raises(ValueError, match="unknown task 'qq'. Known: " + ", ".join(
      sorted(registry.task_names()))):
    registry.task("qq")
  with pytest.raises(ValueError, match=r"label_smoothing=1.5 is not in \[0, 1\)"):
    registry.task("lm", 1.5)
  with pytest.raises(ValueError, match="unknown task 'lmm'"):
    config_lib.base_config("lmm", "gpt2-small")


class ShoutedLM(LanguageModeling):
  """Language modelling on upper-cased documents, with hooks that say they were called."""

  name = "test_shouted_lm"

  def data_defaults(self):
    return {**super().data_defaults(), "case": "upper"}

  def check_data(self, cfg):
    if cfg.case not in ("upper", "lower"):
      raise ValueError(f"case must be 'upper' or 'lower'; got {cfg.case!r}.")

  def records(self, cfg, split):
    docs, meta = super().records(cfg, split)
    return [getattr(d, cfg.case)() for d in docs[:64]], meta

  def decode_metrics(self, model, params, dataset, info, eval_cfg):
    return {"hook_saw_vocab": float(info["vocab_size"])}

  def sample(self, model, params, info, config):
    return f"sample hook of {self.name}"


@pytest.fixture
def shouted():
  registry.register_task(ShoutedLM)
  yield ShoutedLM.name
  registry.unregister_task(ShoutedLM.name)


def test_a_task_defined_outside_zoo_trains_through_the_registry(shouted, tmp_path):
  assert shouted in registry.task_names()
  with pytest.raises(ValueError, match="case must be 'upper' or 'lower'; got 'loud'"):
    zd.build_dataset({"task": shouted, "case": "loud"}, split="train", global_batch_size=2,
                     seed=0)
  data = zd.build_dataset({"task": shouted, "seq_len": 32}, split="train", global_batch_size=2,
                          seed=0)
  text = data.info["tokenizer"].decode(next(iter(data))["input_ids"][0].tolist())
  letters = [ch for ch in text if ch.isalpha()]
  assert letters and all(not ch.islower() for ch in letters), text

  c = config_lib.base_config(shouted, "gpt2-small")
  c.model.update(d_model=32, num_heads=4, num_layers=1, mlp_dim=64, max_len=16)
  c.data.seq_len = 16
  c.train.update(batch_size=8, num_steps=2, log_every=1, checkpoint_every=2, progress_bar=False,
                 plot=False)
  c.eval.update(every=0, num_batches=1)
  result = loop.train(c, str(tmp_path), devices=None)
  assert result.step == 2 and np.isfinite(list(result.losses.values())).all()
  assert result.eval["hook_saw_vocab"] == data.info["vocab_size"]  # the eval hook ran
  assert result.sample == f"sample hook of {shouted}"  # and the end-of-run hook
  assert "bits_per_byte" in result.eval  # host metrics inherited from the lm record
