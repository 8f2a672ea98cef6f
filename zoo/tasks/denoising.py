"""BART's denoising pretraining objective (Lewis et al. 2020): text infilling + sentence
permutation, the original text reconstructed by the decoder.

Data (:mod:`zoo.data.denoising`): offline, the bodies of the standard library's docstrings
(prose, split into sentences); TFDS, a text field (``text_keys``, default ``text``). Each
document's leading sentences that fit ``src_len - 1`` tokens are the target; the source is
them shuffled (``permute_sentences``) with ``mask_ratio`` (0.3) of the tokens removed in
Poisson(``poisson_lambda`` = 3) spans, each replaced by one ``<mask>``. Batch: translation's
keys (``src_ids [B, S]``, ``tgt_in_ids`` / ``tgt_out_ids`` / ``weights [B, T]``), so every
encoder-decoder family trains on it. Metrics: loss, nll, perplexity and accuracy of the
reconstructed tokens. A trained ``bpe`` / ``sentencepiece`` vocabulary gets ``<mask>``.
"""

from __future__ import annotations

from zoo import registry
from zoo.tasks import base


class Denoising(base.TeacherForced):
  """Seq2seq denoising: corrupted text in, the original text predicted."""

  name = "denoising"

  def data_defaults(self):
    return {
        **{k: v for k, v in base.TEXT_DATA.items() if k != "seq_len"},
        "tokenizer": "bpe", "tfds_name": "c4/en", "src_len": 512, "mask_ratio": 0.3,
        "poisson_lambda": 3.0, "permute_sentences": True,
    }

  def check_data(self, cfg):
    from zoo.data import denoising as data  # noqa: PLC0415 - Grain only when data is used

    data.check_rates(cfg.mask_ratio, cfg.poisson_lambda)
    if not isinstance(cfg.src_len, int) or cfg.src_len < 2:
      raise ValueError(f"src_len must be an int >= 2 (a token and EOS); got {cfg.src_len!r}.")

  def special_tokens(self, cfg):
    return ("<mask>",)

  def records(self, cfg, split):
    from zoo.data import denoising as data  # noqa: PLC0415

    return data.documents(cfg, split), {}

  def texts(self, record):
    return (record,)

  def dataset(self, records, tok, *, cfg, info, meta, train, common):
    from zoo.data import denoising as data  # noqa: PLC0415

    info.update(mask_ratio=cfg.mask_ratio, poisson_lambda=cfg.poisson_lambda)
    return data.build(records, tok, cfg=cfg, **common)


registry.register_task(Denoising)
