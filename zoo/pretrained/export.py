"""Export a train.py run as a Hugging Face folder: ``python -m zoo.pretrained export RUN OUT``.

What transformers needs to use the model as trained: the weights (LoRA adapters merged into
their kernels, scanned layers unstacked), a ``config.json`` with ``id2label`` / ``label2id``
when the run had label names and the run's special token ids, and the tokenizer when it has a
Hugging Face form (a ``tokenizer.json`` / ``vocab.txt`` folder the run read, or the BPE it
trained). A byte-level tokenizer has none; the export says so.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from zoo import registry
from zoo.pretrained import api, assemble

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
    "vocab.json", "merges.txt", "source.spm", "target.spm",
    # Not a tokenizer file, but it travels with one: the checkpoint's decoding settings (beams,
    # forced BOS / EOS, min_length, no_repeat_ngram_size), which zoo.generate and transformers'
    # generate both read.
    "generation_config.json",
)

# data_info key -> Hugging Face config.json key.
_SPECIAL_IDS = {"pad_id": "pad_token_id", "bos_id": "bos_token_id", "eos_id": "eos_token_id",
                "sep_id": "sep_token_id"}


def hf_extra(info: dict[str, Any]) -> dict[str, Any]:
  """``config.json`` additions from a run's data facts: labels and special token ids."""
  out: dict[str, Any] = {}
  names = info.get("label_names")
  if names:
    out["id2label"] = {str(i): str(n) for i, n in enumerate(names)}
    out["label2id"] = {str(n): i for i, n in enumerate(names)}
  for key, hf_key in _SPECIAL_IDS.items():
    if info.get(key) is not None:
      out[hf_key] = int(info[key])
  return out


def copy_tokenizer(source: str | None, dst: str) -> list[str]:
  """Copy a tokenizer's Hugging Face files (a folder, or one ``tokenizer.json``) into ``dst``."""
  if not source or not os.path.exists(source):
    return []
  copied = []
  if os.path.isfile(source):
    name = os.path.basename(source)
    target = "tokenizer.json" if name.endswith(".json") else name
    shutil.copy2(source, os.path.join(dst, target))
    return [target]
  for name in TOKENIZER_FILES:
    if os.path.exists(os.path.join(source, name)):
      shutil.copy2(os.path.join(source, name), os.path.join(dst, name))
      copied.append(name)
  return copied


def export_run(workdir: str, out: str, step: int | None = None) -> dict[str, Any]:
  """Write the run in ``workdir`` (checkpoint ``step``, default latest) to ``out``.

  Returns:
    ``{"model": config class name, "step": ..., "tokenizer": [files copied], "labels": n}``.
  """
  if not api.is_workdir(workdir):
    raise ValueError(
        f"{workdir} is not a train.py workdir (it has no checkpoints/ folder); to convert a "
        "Hugging Face or zoo checkpoint use `python -m zoo.pretrained convert`."
    )
  weights = api.read_workdir(workdir, step)
  model = registry.build(weights.config)
  params = assemble.finish(model, weights.flat, None, None)
  api.save_pretrained(model, params, out, extra=hf_extra(weights.info))
  copied = copy_tokenizer(weights.info.get("tokenizer_path"), out)
  return {"model": type(weights.config).__name__, "where": weights.where, "tokenizer": copied,
          "labels": len(weights.info.get("label_names") or ())}
