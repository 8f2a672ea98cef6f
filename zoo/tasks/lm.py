"""Causal language modelling: predict the next token at every weighted position.

Data: documents (the Python standard library's own source text offline; ``tiny_shakespeare``
or any TFDS text field), packed into ``seq_len`` rows (``packing``) or one document a row.
Batch: ``input_ids``, ``targets``, ``weights`` ``[B, L]`` (packed rows add ``positions`` and
``segment_ids``). Metrics: loss, nll, perplexity, accuracy, bits per byte; a text sample at the
end of a run when ``config.sample.num_tokens > 0``.
"""

from __future__ import annotations

import jax

from zoo import registry
from zoo.data import offline
from zoo.data import tfds_sources as tfds_src
from zoo.tasks import base, losses, metrics


class LanguageModeling(base.Task):
  """Causal LM: predict ``targets`` (the next token) at every weighted position."""

  name = "lm"
  projection_loss = True

  def data_defaults(self):
    return {**base.TEXT_DATA, "tfds_name": "tiny_shakespeare", "packing": True}

  def records(self, cfg, split):
    if cfg.source == "offline":
      return offline.lm_documents(cfg.path, split, cfg.offline_eval_fraction), {}
    return tfds_src.documents(cfg, split), {}

  def texts(self, record):
    return (record,)

  def dataset(self, records, tok, *, cfg, info, meta, train, common):
    from zoo.data import lm as lm_data  # noqa: PLC0415 - Grain only once data is built

    info.update(seq_len=cfg.seq_len, packing=cfg.packing)
    return lm_data.build(records, tok, seq_len=cfg.seq_len, packing=cfg.packing, **common)

  def model_overrides(self, info):
    return base.vocab_overrides(info, pad=False)

  def inputs(self, batch):
    kwargs = {k: batch[k] for k in ("positions", "segment_ids") if k in batch}
    return (batch["input_ids"],), kwargs

  def loss_weights(self, batch):
    return {"loss": losses.label_weights(batch["targets"], batch["weights"])}

  def stats(self, outputs, batch):
    return self.token_stats(outputs, batch["targets"], self.loss_weights(batch)["loss"])

  def predictions(self, outputs, batch):
    return {"targets": batch["targets"], "weights": self.loss_weights(batch)["loss"]}

  def host_metrics(self, collected, sums, info):
    tokenizer = info.get("tokenizer")
    if tokenizer is None or "nll" not in sums:
      return {}
    num_bytes = metrics.text_bytes(tokenizer, collected["targets"], collected["weights"])
    return {"bits_per_byte": metrics.bits_per_byte(float(sums["nll"][0]), num_bytes)}

  def sample(self, model, params, info, config):
    if config.sample.num_tokens <= 0:
      return None
    return sample_text(model, params, info, config.sample, seed=config.seed)


def sample_text(model, params, info: dict, sample_cfg, seed: int = 0) -> str:
  """Continue ``sample_cfg.prompt`` with the trained LM (``zoo.generate``); returns the text."""
  from zoo.generate import generate  # noqa: PLC0415 - decoding is only needed at the end

  tokenizer = info.get("tokenizer")
  if tokenizer is None:
    raise ValueError("sampling needs the dataset's tokenizer (info['tokenizer']).")
  prompt = tokenizer.encode(sample_cfg.prompt) if sample_cfg.prompt else []
  if not prompt:
    prompt = [int(info.get("bos_id", info.get("eos_id", 0)) or 0)]
  context = registry.causal_lm(model, "a text sample").context_length(model.config)
  # The last new token is never fed back: a context of C positions makes C - P + 1 new tokens.
  room = sample_cfg.num_tokens if context is None else context - len(prompt) + 1
  new = generate(
      model,
      jax.device_get(params),
      [prompt],
      max_new_tokens=max(1, min(int(sample_cfg.num_tokens), room)),
      eos_id=info.get("eos_id"),
      pad_id=int(info.get("pad_id", 0) or 0),
      do_sample=True,
      temperature=float(sample_cfg.temperature),
      top_k=int(sample_cfg.top_k),
      seed=seed,
  )
  return tokenizer.decode(list(prompt) + [int(t) for t in new[0]])


registry.register_task(LanguageModeling)
