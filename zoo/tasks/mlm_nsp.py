"""BERT pretraining: masked-token prediction plus next-sentence prediction.

Data: documents split into sentences (offline: the standard library's docstrings; TFDS:
``wikipedia``); pairs A/B with B the next sentence or a random one (``nsp_random_rate``), and
``mask_rate`` of the tokens selected (80/10/10 [MASK] / random / unchanged by default). Batch:
``input_ids``, ``token_type_ids``, ``attention_mask``, ``mlm_targets [B, L]``, ``nsp_labels [B]``.
The loss is the sum of the two means (each over its own labels).
"""

from __future__ import annotations

from zoo import registry
from zoo.data import offline
from zoo.data import tfds_sources as tfds_src
from zoo.tasks import base, losses

_RATES = ("mask_rate", "mask_token_rate", "random_token_rate", "nsp_random_rate")


class MaskedLMAndNSP(base.Task):
  """BERT pretraining: masked-token loss + next-sentence loss, each a mean over its labels."""

  name = "mlm_nsp"
  loss_terms = ("mlm_loss", "nsp_loss")

  def data_defaults(self):
    return {
        **base.TEXT_DATA, "tfds_name": "wikipedia/20230601.en", "mask_rate": 0.15,
        "mask_token_rate": 0.8, "random_token_rate": 0.1, "nsp_random_rate": 0.5,
    }

  def check_data(self, cfg):
    for key in _RATES:
      if not 0.0 <= cfg[key] <= 1.0:
        raise ValueError(f"{key} must be in [0, 1]; got {cfg[key]}.")
    if cfg.mask_token_rate + cfg.random_token_rate > 1.0:
      raise ValueError(
          f"mask_token_rate + random_token_rate = {cfg.mask_token_rate + cfg.random_token_rate}"
          " > 1: they split the selected tokens (the rest stay unchanged)."
      )

  def records(self, cfg, split):
    if cfg.source == "offline":
      return offline.mlm_documents(cfg.path, split, cfg.offline_eval_fraction), {}
    return tfds_src.documents(cfg, split), {}

  def texts(self, record):
    return (record,)

  def dataset(self, records, tok, *, cfg, info, meta, train, common):
    from zoo.data import bert as bert_data  # noqa: PLC0415 - Grain only once data is built

    info["seq_len"] = cfg.seq_len
    return bert_data.build_mlm_nsp(records, tok, cfg=cfg, **common)

  def model_overrides(self, info):
    return {**base.vocab_overrides(info), "head": "pretraining"}

  def inputs(self, batch):
    return base.text_inputs(batch)

  def loss_weights(self, batch):
    return {
        "mlm_loss": losses.label_weights(batch["mlm_targets"]),
        "nsp_loss": losses.label_weights(batch["nsp_labels"]),
    }

  def stats(self, outputs, batch):
    w = self.loss_weights(batch)
    out = self.token_stats(outputs["mlm_logits"], batch["mlm_targets"], w["mlm_loss"], "mlm_")
    out.update(self.token_stats(outputs["nsp_logits"], batch["nsp_labels"], w["nsp_loss"], "nsp_"))
    del out["nsp_nll"]  # a perplexity of a yes/no question says nothing
    return out


registry.register_task(MaskedLMAndNSP)
