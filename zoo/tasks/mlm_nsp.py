"""BERT pretraining: masked-token prediction plus next-sentence prediction.

Data: documents split into sentences (offline: the standard library's docstrings; TFDS:
``wikipedia``); pairs A/B with B the next sentence or a random one (``nsp_random_rate``), and
``mask_rate`` of the tokens selected (80/10/10 [MASK] / random / unchanged by default). Batch:
``input_ids``, ``token_type_ids``, ``attention_mask``, ``mlm_targets [B, L]``, ``nsp_labels [B]``
and the selection gathered to ``P = max_predictions`` slots: ``masked_positions``,
``masked_labels``, ``masked_weights [B, P]``. The loss is the sum of the two means (each over
its own labels).

Training and evaluation pass ``masked_positions`` to the model, whose MLM head then scores
``[B, P, V]`` logits instead of ``[B, L, V]`` (the original BERT); a batch without it (only
``mlm_targets``) is scored at every position, with the same statistics.
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
  projection_loss = True

  def data_defaults(self):
    return {
        **base.TEXT_DATA, "tfds_name": "wikipedia/20230601.en", "mask_rate": 0.15,
        "mask_token_rate": 0.8, "random_token_rate": 0.1, "nsp_random_rate": 0.5,
        # MLM slots per row; None = the most the selection can produce, rounded up to 8.
        "max_predictions": None,
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
    p = cfg.max_predictions
    if p is not None and (not isinstance(p, int) or isinstance(p, bool) or p < 1):
      raise ValueError(
          f"max_predictions must be None (automatic) or an integer >= 1; got {p!r}."
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
    info["max_predictions"] = bert_data.max_predictions(cfg)
    return bert_data.build_mlm_nsp(records, tok, cfg=cfg, **common)

  def model_overrides(self, info):
    return {**base.vocab_overrides(info), "head": "pretraining"}

  def inputs(self, batch):
    args, kwargs = base.text_inputs(batch)
    if "masked_positions" in batch:
      kwargs["masked_positions"] = batch["masked_positions"]
    return args, kwargs

  def mlm_labels(self, batch):
    """``(labels, weights)`` the MLM logits are scored against: ``[B, P]`` when the batch has
    ``masked_positions`` (the model's logits are gathered there), else ``[B, L]``."""
    if "masked_positions" in batch:
      labels = batch["masked_labels"]
      return labels, losses.label_weights(labels, batch["masked_weights"])
    return batch["mlm_targets"], losses.label_weights(batch["mlm_targets"])

  def loss_weights(self, batch):
    return {
        "mlm_loss": self.mlm_labels(batch)[1],
        "nsp_loss": losses.label_weights(batch["nsp_labels"]),
    }

  def stats(self, outputs, batch):
    w = self.loss_weights(batch)
    labels, _ = self.mlm_labels(batch)
    out = self.token_stats(outputs["mlm_logits"], labels, w["mlm_loss"], "mlm_")
    out.update(self.token_stats(outputs["nsp_logits"], batch["nsp_labels"], w["nsp_loss"], "nsp_"))
    del out["nsp_nll"]  # a perplexity of a yes/no question says nothing
    return out


registry.register_task(MaskedLMAndNSP)
