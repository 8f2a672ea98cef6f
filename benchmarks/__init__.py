"""Benchmarks: zoo next to Hugging Face transformers (PyTorch), measured in the same run.

One script per family at the standard shapes, plus the attention backends::

  python -m benchmarks.gpt          # GPT-2 124M, T=1024
  python -m benchmarks.llama        # Llama-shaped 12 x 768 decoder, 128K vocabulary, T=1024
  python -m benchmarks.bert         # BERT-base pretraining heads, T=128 and T=512
  python -m benchmarks.vit          # ViT-B/16 at 224 px
  python -m benchmarks.transformer  # Transformer-base, source 256 / target 256
  python -m benchmarks.t5           # T5-small, source 512 / target 128
  python -m benchmarks.attention    # dot_product_attention: xla vs cudnn across lengths
  python -m benchmarks.all --out results.json --markdown BENCHMARKS_TABLE.md

Every script takes ``--smoke`` (tiny shapes, seconds on a CPU: what the test suite runs),
``--out`` (JSON), ``--markdown`` (the table), ``--batch-size``, ``--steps``, ``--warmup``,
``--peers`` and ``--peak-tflops``; ``--help`` lists the rest. Nothing here is asserted in
tests: the tests only check that the scripts run and that their outputs have the promised
structure.
"""

import os

# zoo and PyTorch share one GPU inside a script: JAX must not grab 75% of it up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
