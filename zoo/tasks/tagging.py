"""Token classification (named entities, parts of speech, word segmentation): one label per word.

Data: words with one tag each (offline: B/M/E/S word segmentation of the standard library's
docstrings; TFDS: ``conll2003`` and any dataset with a tokens and a tag-sequence feature). Only
the first piece of each word carries its label; later pieces, specials and padding are
``IGNORE_INDEX``. Batch: ``input_ids``, ``token_type_ids``, ``attention_mask``, ``labels [B, L]``.
Metrics: loss, accuracy, span precision / recall / F1 (seqeval, strict).
"""

from __future__ import annotations

from zoo import registry
from zoo.data import offline
from zoo.data import tfds_sources as tfds_src
from zoo.data.batch import IGNORE_INDEX
from zoo.tasks import metrics
from zoo.tasks.classification import Classification


class Tagging(Classification):
  """One label per token: the classification loss at every labelled position."""

  name = "tagging"
  head = "token_classification"

  def data_defaults(self):
    return {**super().data_defaults(), "tfds_name": "conll2003", "label_key": "ner"}

  def records(self, cfg, split):
    if cfg.source == "offline":
      recs, names = offline.tagging_records(cfg.path, split, cfg.offline_eval_fraction)
    else:
      recs, names = tfds_src.tagging_records(cfg, split)
    return recs, {"label_names": names}

  def texts(self, record):
    return (" ".join(record[0]),)

  def dataset(self, records, tok, *, cfg, info, meta, train, common):
    from zoo.data import bert as bert_data  # noqa: PLC0415 - Grain only once data is built

    names = meta["label_names"]
    info.update(seq_len=cfg.seq_len, num_labels=len(names), label_names=names)
    return bert_data.build_tagging(records, tok, seq_len=cfg.seq_len, **common)

  def host_metrics(self, collected, sums, info):
    names = info.get("label_names")
    if not names:
      return {}
    gold, pred = [], []
    for labels, preds in zip(collected["labels"], collected["preds"], strict=True):
      keep = labels != IGNORE_INDEX  # the first piece of each word; specials and padding not
      if keep.any():
        gold.append(labels[keep].tolist())
        pred.append(preds[keep].tolist())
    return metrics.span_scores(gold, pred, names)


registry.register_task(Tagging)
