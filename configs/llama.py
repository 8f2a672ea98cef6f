"""Llama-family language models (task ``lm``): Llama 2 / 3, Mistral, Qwen2.5 / 3, TinyLlama,
Phi-3, Gemma 1 / 2 / 3.

``--config configs/llama.py:<arg>`` with ``<arg>`` one of:

* a preset (``tinyllama-1.1b``, ``llama2-7b``, ``llama3-8b``, ``mistral-7b``,
  ``qwen2.5-0.5b``, ``qwen3-0.6b``, ``qwen3-8b``, ``phi3-mini``, ``gemma-2b``, ``gemma-7b``,
  ``gemma2-2b``, ``gemma2-9b``, ``gemma3-1b``): the architecture from scratch with the Llama 2
  recipe (AdamW, b2 0.95, weight decay 0.1, 2000 warm-up steps, cosine to 10%, clipping at 1),
  bfloat16 compute on float32 master weights, parameters sharded over an ``fsdp`` mesh axis of
  all devices;
* ``lora``: fine-tune the checkpoint ``--config.init.path`` names (a Hugging Face Llama,
  Mistral, Qwen2 / 3, Phi-3 or Gemma 1 / 2 / 3 folder; the architecture and tokenizer are the
  checkpoint's) with LoRA adapters of rank 8 on the attention projections, bfloat16 compute,
  float32 weights; only the adapters train and export merges them (``python -m zoo.pretrained
  export``);
* ``smoke``: a two-layer Llama-shaped model, seconds on a CPU.

Data: the offline default is the standard library's Python source (byte tokenizer unless the
checkpoint brings one); ``--config.data.source=tfds`` switches to a TFDS text dataset.
"""

from zoo.training.config import base_config, choose

PRESETS = ("tinyllama-1.1b", "llama2-7b", "llama3-8b", "mistral-7b", "qwen2.5-0.5b",
           "qwen3-0.6b", "qwen3-8b", "phi3-mini", "gemma-2b", "gemma-7b", "gemma2-2b",
           "gemma2-9b", "gemma3-1b")
ARGS = (*PRESETS, "lora", "smoke")  # the `:arg` choices; the first is the default
LORA_TARGETS = r"attn/(query|key|value|out)$"


def get_config(arg=None):
  arg = choose(arg, ARGS)
  preset = arg if arg in PRESETS else "tinyllama-1.1b"
  c = base_config("lm", preset)
  c.model.update(dtype="bfloat16", param_dtype="float32")  # bf16 math, float32 master weights
  c.optim.update(lr=3e-4, b2=0.95, weight_decay=0.1, warmup_steps=2000, clip_norm=1.0,
                 end_lr_ratio=0.1)
  c.train.update(batch_size=64, num_steps=100_000)
  c.data.seq_len = 2048
  c.mesh.update(data=1, fsdp=-1)  # FSDP: a 7B model's weights and moments do not fit on one chip
  c.sample.update(prompt="def ", num_tokens=128)

  if arg == "lora":
    c.lora.update(rank=8, alpha=16.0, targets=LORA_TARGETS)
    c.data.seq_len = 256
    c.train.update(batch_size=16, num_steps=300, log_every=25, checkpoint_every=100)
    c.optim.update(lr=2e-4, warmup_steps=20, weight_decay=0.0)
    c.eval.update(every=100, num_batches=5)
    c.sample.update(prompt="def ", num_tokens=60)
  elif arg == "smoke":
    c.model.update(d_model=32, num_heads=4, num_kv_heads=2, num_layers=2, mlp_dim=64,
                   max_len=32, dtype="float32")
    c.data.seq_len = 32
    c.mesh.update(data=-1, fsdp=1)
    c.train.update(batch_size=8, num_steps=30, log_every=10, checkpoint_every=10)
    c.optim.update(lr=5e-3, warmup_steps=3)
    c.eval.update(every=0, num_batches=2)
    c.sample.update(num_tokens=0)
  else:
    c.model.max_len = c.data.seq_len
  return c
