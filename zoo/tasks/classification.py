"""Sequence classification: one label per example, from the [CLS] position.

Data: texts or text pairs with a label (offline: which standard-library package a docstring
comes from; TFDS: ``glue/sst2`` and any dataset with text fields and a ``label_key``). Batch:
``input_ids``, ``token_type_ids``, ``attention_mask [B, L]``, ``labels [B]``. Metrics: loss,
accuracy, macro-F1 (scikit-learn).
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp

from zoo import registry
from zoo.data import offline
from zoo.data import tfds_sources as tfds_src
from zoo.data.batch import IGNORE_INDEX
from zoo.tasks import base, losses, metrics


def _logits(outputs):
  return outputs["logits"] if isinstance(outputs, dict) else outputs


class Classification(base.Task):
  """One label per example: text (``input_ids``) or images (``images``)."""

  name = "classification"
  head: ClassVar[str] = "sequence_classification"  # the model config's head

  def data_defaults(self):
    return {**base.TEXT_DATA, "tfds_name": "glue/sst2", "label_key": "label"}

  def records(self, cfg, split):
    if cfg.source == "offline":
      recs, names = offline.classification_records(cfg.path, split, cfg.offline_eval_fraction)
    else:
      recs, names = tfds_src.classification_records(cfg, split)
    return recs, {"label_names": names}

  def texts(self, record):
    return record[0]

  def dataset(self, records, tok, *, cfg, info, meta, train, common):
    from zoo.data import bert as bert_data  # noqa: PLC0415 - Grain only once data is built

    names = meta["label_names"]
    info.update(seq_len=cfg.seq_len, num_classes=len(names), label_names=names)
    return bert_data.build_classification(records, tok, seq_len=cfg.seq_len, **common)

  def model_overrides(self, info):
    out = {**base.vocab_overrides(info), "head": self.head}
    if base.num_labels(info):
      out["num_labels"] = base.num_labels(info)
    return out

  def inputs(self, batch):
    if "images" in batch:
      return (batch["images"],), {}
    return base.text_inputs(batch)

  def loss_weights(self, batch):
    return {"loss": losses.label_weights(batch["labels"])}

  def stats(self, outputs, batch):
    out = self.token_stats(_logits(outputs), batch["labels"], self.loss_weights(batch)["loss"])
    del out["nll"]
    return out

  def predictions(self, outputs, batch):
    preds = jnp.argmax(_logits(outputs), axis=-1).astype(jnp.int32)
    return {"labels": batch["labels"], "preds": preds}

  def host_metrics(self, collected, sums, info):
    keep = collected["labels"] != IGNORE_INDEX  # padded rows of a short last batch
    return {"macro_f1": metrics.macro_f1(collected["labels"][keep], collected["preds"][keep])}


registry.register_task(Classification)
