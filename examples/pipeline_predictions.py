"""A fine-tuned classifier run, exported and used through transformers' ``pipeline``.

``python examples/pipeline_predictions.py runs/minilm-topic [--num 200]`` exports the train.py
run (``python -m zoo.pretrained export``), classifies validation docstrings of the offline topic
task with ``transformers.pipeline("text-classification")`` and with zoo on the same weights,
and prints how many predictions agree, the pipeline's accuracy, and a few examples.
No network: the exported folder carries the weights, labels and tokenizer.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("workdir", help="a train.py --workdir of a classification run")
  p.add_argument("--num", type=int, default=200, help="validation docstrings to classify")
  args = p.parse_args(argv)

  import jax.numpy as jnp
  import numpy as np
  import transformers

  import zoo
  from zoo.data import offline
  from zoo.pretrained.export import export_run

  out = tempfile.mkdtemp(prefix="zoo-export-")
  export_run(args.workdir, out)
  records, names = offline.classification_records(None, "validation", 0.1)
  texts = [records[i][0][0] for i in range(min(args.num, len(records)))]
  labels = [names[records[i][1]] for i in range(len(texts))]

  classify = transformers.pipeline("text-classification", model=out, tokenizer=out, device="cpu")
  # Whole docstrings on both sides (the model's 512 positions hold them all).
  piped = [r["label"] for r in classify(texts, truncation=True, max_length=512, batch_size=16)]

  model, params = zoo.from_pretrained(out)
  tok = zoo.load_tokenizer(out)
  ours = []
  for text in texts:
    enc = tok(text, max_length=512)
    logits = model.apply({"params": params}, jnp.asarray(enc["input_ids"]),
                         token_type_ids=jnp.asarray(enc["token_type_ids"]),
                         attention_mask=jnp.asarray(enc["attention_mask"]))["logits"]
    ours.append(model_label(out, int(np.argmax(logits[0]))))
  agree = sum(a == b for a, b in zip(piped, ours, strict=True))
  accuracy = sum(a == b for a, b in zip(piped, labels, strict=True)) / len(texts)
  print(f"exported {args.workdir} -> {out}")
  print(f"pipeline and zoo agree on {agree}/{len(texts)} predictions; "
        f"pipeline accuracy {accuracy:.3f}")
  for text, label, pred in list(zip(texts, labels, piped, strict=True))[:3]:
    print(f"  [{label} -> {pred}] {text[:70]}...")
  return 0 if agree == len(texts) else 1


def model_label(folder: str, index: int) -> str:
  import json

  with open(os.path.join(folder, "config.json")) as f:
    return json.load(f)["id2label"][str(index)]


if __name__ == "__main__":
  sys.exit(main())
