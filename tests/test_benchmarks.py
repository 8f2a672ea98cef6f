"""Benchmarks: every script's smoke mode runs and reports what it promises (no timing asserted).

The scripts run in this process (one set of jax / torch imports), zoo against Hugging Face
eager only: ``torch.compile`` takes minutes on a CPU. What can fail here: a script crashing,
a missing column or field, ratios that are not zoo / peer, FLOP conventions that disagree with
the formula, a JSON file that does not round-trip, a failing peer that takes the run down, a
zoo step that is not the training loop's.
"""

import functools
import json
import pathlib
import shutil
import tempfile

import jax
import numpy as np
import pytest
from flax import linen as nn

from benchmarks import all as bench_all
from benchmarks import (
  attention,
  bert,
  cases,
  cli,
  gpt,
  llama,
  report,
  runner,
  t5,
  timing,
  torch_side,
  transformer,
  vit,
  zoo_side,
)

SMOKE = ["--smoke", "--peers", "eager"]
FAMILIES = {
    "gpt": (gpt, []),
    "llama": (llama, []),
    "bert": (bert, ["--lengths", "16"]),
    "vit": (vit, ["--schedule", "sequential"]),  # the GPU default; the others interleave
    "transformer": (transformer, []),
    "t5": (t5, []),
}


@functools.cache
def _report(name: str):
  """One family's smoke benchmark, run once per worker: (report, its JSON, its markdown)."""
  module, extra = FAMILIES[name]
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
  path, md = tmp / f"{name}.json", tmp / f"{name}.md"
  report = module.main([*SMOKE, *extra, "--out", str(path), "--markdown", str(md)])
  out = (report, json.loads(path.read_text()), md.read_text())
  shutil.rmtree(tmp)
  return out


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_report_structure(name):
  report, loaded, md = _report(name)
  assert loaded["benchmark"] == report["benchmark"]
  env = loaded["environment"]
  for key in ("date", "device", "versions", "peak_source", "dtype", "steps"):
    assert key in env, key
  assert {"jax", "flax", "torch", "transformers"} <= set(env["versions"])
  assert env["peak_flops"] is None and "unknown" in env["peak_source"]  # CPU, no flag
  (case,) = loaded["cases"]
  assert case["unit"] == ("images" if name == "vit" else "tokens")
  frameworks = [r["framework"] for r in case["results"]]
  assert frameworks == ["zoo", "hf eager"], frameworks
  for r in case["results"]:
    assert "error" not in r, r.get("error")
    train, fwd = r["train"], r["forward"]
    assert len(train["times_s"]) == 2 and train["step_s"] > 0
    np.testing.assert_allclose(train["units_per_s"], case["units_per_step"] / train["step_s"])
    assert set(train["mfu"]) == set(cases.CONVENTIONS) and train["mfu"]["full"] is None
    _check_host_memory(train["memory"])
    assert np.isfinite(train["loss_first"])
    assert fwd["units_per_s"] > 0
  zoo = case["results"][0]
  assert zoo["train"]["compile_s"] > 0 and zoo["forward"]["compile_s"] > 0
  ratio, peer = case["ratios"]["hf eager"], case["results"][1]
  np.testing.assert_allclose(
      ratio["train"], zoo["train"]["units_per_s"] / peer["train"]["units_per_s"]
  )
  np.testing.assert_allclose(
      ratio["forward_best"], peer["forward"]["min_s"] / zoo["forward"]["min_s"]
  )
  assert env["schedule"] == ("sequential" if name == "vit" else "interleaved")
  # Same architecture, same random-label task: both start near log(V) (or log(classes)).
  z, h = zoo["train"]["loss_first"], case["results"][1]["train"]["loss_first"]
  assert abs(z - h) < 0.1 * max(z, h), (z, h)
  for header in ("| framework |", "| zoo |", "| hf eager |", "MFU 6N+12·L·d·T", "causal ½",
                 "| peak mem build + compile | peak mem steps |", "memory_analysis()"):
    assert header in md, header
  xla = zoo["train"]["xla_memory"]
  assert xla["alias_bytes"] > 0 and xla["temp_bytes"] > 0  # the donated state, the step's own
  assert xla["total_bytes"] == (
      xla["argument_bytes"] + xla["output_bytes"] + xla["temp_bytes"] - xla["alias_bytes"]
  )
  assert "xla_memory" not in peer["train"]


def _check_host_memory(mem):
  """The three CPU figures of one framework: all present, and the windows nest."""
  for key in ("bytes", "compile_peak_bytes"):
    assert isinstance(mem[key], int) and mem[key] > 0, (key, mem)
  # A smoke model's parameters are a few hundred KiB: RSS after its build can sit a few MiB
  # below the trimmed base (the allocator returns pages). The window itself is measured on a
  # known allocation in test_host_memory_keeps_compile_out_of_the_steps_figure.
  assert isinstance(mem["build_bytes"], int), mem
  # The first window's peak covers the build (the peak is at least any RSS it saw).
  assert mem["compile_peak_bytes"] >= mem["build_bytes"], mem
  assert set(mem["how"]) == set(timing.HOST_MEMORY_HOW)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_flop_conventions(name):
  # Causal attention is halved only where it is causal: GPT (all) and the Transformer's
  # decoder self-attention; the encoders (BERT, ViT) give the same number twice.
  flops = _report(name)[1]["cases"][0]["flops_per_step"]
  if name in ("bert", "vit"):
    assert flops["full"] == flops["causal_half"]
  else:
    assert flops["causal_half"] < flops["full"]
  if name != "gpt":
    return
  # GPT, by hand: exactly 6 N T + 12 L d T^2 per row, N without the position table.
  cfg = gpt.SMOKE
  b, t = 2, cfg["max_len"]
  import zoo

  model = zoo.build("gpt2-small", **cfg)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, t), np.int32)))
  params = nn.unbox(shapes["params"])
  def size(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))

  n = size(params) - size(params["wpe"])
  attn = 12 * cfg["num_layers"] * cfg["d_model"] * t * b * t
  assert flops["full"] == pytest.approx(6 * n * b * t + attn)
  assert flops["causal_half"] == pytest.approx(6 * n * b * t + attn / 2)


def test_zoo_step_is_the_training_loops(monkeypatch):
  """The step the benchmarks time (and benchmarks.profile traces) is ``steps.train_step``,
  jitted by ``steps.program`` with the state donated: the one ``train.py`` runs."""
  from zoo.training import mesh as mesh_lib
  from zoo.training import steps

  real, traced = steps.train_step, []

  def spy(state, batch, rng, **kwargs):  # train_step's argument names: "state" is donated
    traced.append(kwargs["task"].name)
    return real(state, batch, rng, **kwargs)

  args = cli.parse(cli.parser("t"), [*SMOKE, "--no-forward"])
  case = gpt.case(args)
  steps.program.cache_clear()  # a program cached earlier would hold the real train_step
  monkeypatch.setattr(steps, "train_step", spy)
  try:
    prepared = zoo_side.prepare(case, args)
    prog = prepared.program
    # The loop's cached program for the benchmark's model, task, optimizer and one device.
    assert prog is steps.program_for(
        case.zoo().config, zoo_side.get_task("lm"), zoo_side.optim_config(),
        num_steps=zoo_side.OPTIM_STEPS,
        mesh=mesh_lib.make_mesh(zoo_side.ONE_DEVICE_MESH, jax.devices()[:1]),
        rules=mesh_lib.rules_from_config(None), compiler_options=zoo_side.compiler_options(args),
    )
  finally:
    steps.program.cache_clear()  # no program built around the spy outlives this test
  assert traced == ["lm"]  # compiling the timed step traced the loop's train_step, once
  assert prepared.step_fn is prog.step and prepared.step_fn.__wrapped__.func is spy
  assert prog.abstract.step.sharding.mesh.size == 1
  assert "input_output_alias" in prepared.compiled.as_text()  # the state is donated
  # ... all of it: every byte of params and optimizer state is an aliased argument.
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(prog.abstract))
  assert prepared.result["train"]["xla_memory"]["alias_bytes"] == state_bytes
  assert np.isfinite(prepared.result["train"]["loss_first"])


def test_host_memory_keeps_compile_out_of_the_steps_figure():
  """A phase that allocates and frees 256 MiB before ``arm()`` (what compiling does) shows in
  the build + compile peak and not in the steps peak; what stays allocated shows in both."""
  mib = 2**20
  host = timing.HostMemory()
  host.start()
  if not host.resettable:
    pytest.skip("needs Linux /proc/self/clear_refs")
  kept = np.ones(32 * mib // 8)  # "parameters": touched, kept
  host.built()
  transient = np.ones(256 * mib // 8)  # "compiler": touched, freed before the steps
  del transient
  host.arm()
  step = np.ones(64 * mib // 8)  # "one step's temporaries"
  del step
  mem = host.peak()
  assert 30 * mib < mem["build_bytes"] < 90 * mib, mem
  assert mem["compile_peak_bytes"] > (32 + 250) * mib, mem
  assert (32 + 60) * mib < mem["bytes"] < (32 + 64 + 120) * mib, mem  # no 256 MiB in it
  del kept


def test_program_holds_no_init_executable(monkeypatch):
  """``init_state`` jits the initialiser for that call only: once the state exists nothing
  keeps the jitted init (and with it its compiled executable) alive through training."""
  import gc
  import weakref

  from zoo.training import mesh as mesh_lib
  from zoo.training import state as state_lib
  from zoo.training import steps

  made = []
  real = state_lib.make_init

  def recording(*args, **kwargs):
    fn = real(*args, **kwargs)
    made.append(weakref.ref(fn))
    return fn

  monkeypatch.setattr(state_lib, "make_init", recording)
  args = cli.parse(cli.parser("t"), [*SMOKE, "--no-forward"])
  work = gpt.case(args).zoo()
  mesh = mesh_lib.make_mesh(zoo_side.ONE_DEVICE_MESH, jax.devices()[:1])
  rules = mesh_lib.rules_from_config(None)
  steps.program.cache_clear()
  try:
    prog = steps.program_for(work.config, zoo_side.get_task(work.task), zoo_side.optim_config(),
                             num_steps=10, mesh=mesh, rules=rules)
    state = steps.init_state(prog, mesh, rules, jax.random.PRNGKey(0))
    gc.collect()
    assert len(made) == 1 and made[0]() is None  # made for the call, released after it
    again = steps.init_state(prog, mesh, rules, jax.random.PRNGKey(0))
    same = jax.tree.map(lambda a, b: bool((a == b).all()), state.params, again.params)
    assert all(jax.tree.leaves(same))  # the same key, the same state
  finally:
    steps.program.cache_clear()


def test_mfu_uses_the_given_peak():
  case = cases.Case("m", "s", "tokens", 100, {"full": 2e12, "causal_half": 1e12}, None, {})
  rates = timing.rates(case, 2.0, peak=1e12)
  assert rates["mfu"] == {"full": 1.0, "causal_half": 0.5}
  assert rates["units_per_s"] == 50


def test_failing_peer_is_reported_not_fatal():
  args = cli.parse(cli.parser("t"), SMOKE)

  def broken():
    raise RuntimeError("no such kernel\nsecond line")

  case = cases.Case("m", "s", "tokens", 4, {"full": 1.0, "causal_half": 1.0}, None,
                     {"hf": broken})
  prepared = torch_side.prepare(case, "hf", "compile", args)
  result = prepared.result
  assert result == {"framework": "hf torch.compile",
                    "error": "failed: RuntimeError: no such kernel"}
  assert prepared.train is None and prepared.forward is None
  timing.time_steps([prepared], "train", 2)  # skipped, not crashed
  fake_zoo = {"framework": "zoo", "train": {"step_s": 1.0, "min_s": 1.0}}
  row = report.case_markdown({
      "model": "m", "shape": "s", "unit": "tokens", "units_per_step": 4,
      "flops_per_step": case.flops, "results": [result],
      "ratios": runner.ratios([fake_zoo, result]),
  })
  assert "| hf torch.compile | failed: RuntimeError: no such kernel |" in row


def test_bad_flags():
  with pytest.raises(ValueError, match="--peers"):
    cli.parse(cli.parser("t"), ["--peers", "eager,jit"])
  with pytest.raises(ValueError, match="--only"):
    bench_all.main(["--only", "gpt,resnet"])


def test_attention_and_all_merge(tmp_path):
  out, md = tmp_path / "all.json", tmp_path / "all.md"
  combined = bench_all.main([
      "--only", "attention", "--in-process", "--smoke", "--lengths", "16",
      "--out", str(out), "--markdown", str(md),
  ])
  (att,) = combined["benchmarks"]
  rows = att["attention"]
  assert [r["implementation"] for r in rows] == ["xla", "chunked"]  # CPU: no cuDNN
  assert "needs an NVIDIA GPU" in att["notes"][0]
  assert rows[0]["forward_backward"]["step_s"] > 0
  assert json.loads(out.read_text())["benchmarks"][0]["attention"][0]["length"] == 16
  # The merged table over family reports (two here, each computed once per worker): one
  # summary row per case, ratios included.
  names = ("gpt", "transformer")
  merged, text = bench_all.merge([_report(n)[1] for n in names] + [att])
  summary = text.split("### Summary")[1].split("###")[0]
  for name in names:
    model = _report(name)[1]["cases"][0]["model"]
    assert f"| {model} |" in summary
  assert "zoo ÷ hf eager: train (best) / fwd (best)" in summary
  memory = text.split("### Summary: peak memory")[1].split("###")[0]
  assert "| zoo: build + compile / steps | hf eager: build + compile / steps |" in memory
  for name in names:
    case = _report(name)[1]["cases"][0]
    zoo_mem = case["results"][0]["train"]["memory"]
    cell = (f"{report.fmt_bytes(zoo_mem, 'compile_peak_bytes')} / "
            f"{report.fmt_bytes(zoo_mem)}")
    assert f"| {case['model']} | {case['shape']} | {cell} |" in memory
  assert "Attention backends" in text and "## Results" in md.read_text()
  with pytest.raises(ValueError, match="--lengths"):
    attention.main(["--smoke", "--lengths", "x"])


def test_profile_attributes_the_step_to_passes_and_modules(tmp_path):
  from benchmarks import profile

  out = tmp_path / "prof.json"
  report = profile.main(["gpt", "--smoke", "--top", "5", "--out", str(out)])
  groups = report["groups"]
  passes = {g["pass"] for g in groups}
  assert {"forward", "backward", "update"} <= passes
  modules = {g["module"] for g in groups}
  assert any(m.startswith("decoder/layers_*/") for m in modules)  # layers folded together
  assert not any("layers_0" in m for m in modules)
  assert abs(sum(g["share"] for g in groups) - 1) < 1e-6
  assert report["op_s"] > 0 and json.loads(out.read_text())["groups"][0]["ms"] > 0
  assert profile.classify(
      "jit(f)/transpose(jvp(GPT))/decoder/layers_3/attn/BTD,DH->BTH/dot_general"
  ) == ("backward", "decoder/layers_*/attn")
  assert profile.classify("jit(f)/jvp(jit(log_softmax))/reduce_max")[0] == "forward"


def test_gpu_script_dry_run_without_tfds_or_grain(tmp_path):
  """benchmarks/gpu.sh --dry-run on tiny CPU shapes, in a process where tensorflow_datasets and
  grain cannot be imported (the GPU image has neither). The parity section only: the family
  scripts' smoke runs are the tests above, and importing them (plus every model family, through
  the registry) is what the section checks for the forbidden imports."""
  import subprocess
  import sys

  blocked = "import sys; sys.modules['tensorflow_datasets'] = sys.modules['grain'] = None; "
  run = "import runpy; runpy.run_module('benchmarks.gpu', run_name='__main__')"
  out = tmp_path / "gpu"
  imports = (
      "import benchmarks.gpt, benchmarks.bert, benchmarks.vit, zoo, zoo.training.loop; "
      "import zoo.pretrained.gpt2, zoo.pretrained.bert, zoo.pretrained.vit; "
      "[zoo.get_config(n) for n in ('gpt2-small', 'bert-base', 'vit-b16')]; "
  )
  cmd = [sys.executable, "-c", blocked + imports + run, "--dry-run", "--only", "parity",
         "--out-dir", str(out)]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False,
                        env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  combined = json.loads((out / "results.json").read_text())
  assert combined["dry_run"] and combined["forbidden_imports"] == []
  parity = combined["sections"]["parity"]
  impls = {(r["mask"], r["implementation"]) for r in parity["rows"]}
  assert impls == {(m, i) for m in ("causal", "padding") for i in ("xla", "chunked")}
  for r in parity["rows"]:
    for name in ("out", "dq", "dk", "dv"):
      assert r[name]["finite"] and r[name]["relative"] < 0.05, (r["mask"], r["implementation"])
  text = (out / "results.md").read_text()
  assert "### Attention parity (bf16)" in text and "| causal | chunked |" in text
