"""T5's span-corruption pretraining objective (Raffel et al. 2020, §3.1.4 and §3.3).

Data: documents (offline: the Python standard library's own source text, the ``lm`` corpus;
TFDS: ``c4/en``'s ``text``), tokenized, laid end to end with EOS after each and cut into
chunks; in each chunk ``noise_density`` (15%) of the tokens, in spans of
``mean_noise_span_length`` (3) tokens on average, are replaced by sentinels
(``<extra_id_N>``) in the inputs and predicted in the targets (see
:mod:`zoo.data.span_corruption`). Batch: translation's keys, ``src_ids [B, S]``, ``tgt_in_ids``
/ ``tgt_out_ids`` / ``weights [B, T]``, so every encoder-decoder family trains on it. Metrics:
loss, nll, perplexity and accuracy of the target tokens.

Keys: ``src_len`` (the inputs length, 512), ``targets_length`` (None = computed from
``src_len``: 114 for 512), ``noise_density``, ``mean_noise_span_length``, ``num_sentinels``
(the ``<extra_id_N>`` tokens a trained ``bpe`` / ``sentencepiece`` vocabulary gets).
"""

from __future__ import annotations

from zoo import registry
from zoo.data import tokenizers
from zoo.tasks import base


class SpanCorruption(base.TeacherForced):
  """Seq2seq denoising: sentinel-marked inputs in, the dropped spans predicted."""

  name = "span_corruption"

  def data_defaults(self):
    return {
        **{k: v for k, v in base.TEXT_DATA.items() if k != "seq_len"},
        "tokenizer": "sentencepiece", "tfds_name": "c4/en", "src_len": 512,
        "targets_length": None, "noise_density": 0.15, "mean_noise_span_length": 3.0,
        "num_sentinels": 100,
    }

  def check_data(self, cfg):
    from zoo.data import span_corruption as data  # noqa: PLC0415 - Grain only when data is used

    if cfg.targets_length is not None and not isinstance(cfg.targets_length, int):
      raise ValueError(
          f"targets_length must be an int or None (computed); got {cfg.targets_length!r}."
      )
    if not isinstance(cfg.num_sentinels, int) or cfg.num_sentinels < 1:
      raise ValueError(f"num_sentinels must be a positive int; got {cfg.num_sentinels!r}.")
    spans = data.check_lengths(
        cfg.src_len, cfg.noise_density, cfg.mean_noise_span_length, cfg.targets_length
    )[2]
    if cfg.tokenizer in tokenizers.TRAINABLE and cfg.num_sentinels < spans:
      raise ValueError(
          f"num_sentinels={cfg.num_sentinels} gives the trained {cfg.tokenizer} vocabulary "
          f"too few sentinels: a chunk for src_len={cfg.src_len} has {spans} noise spans, one "
          f"sentinel each. Set num_sentinels >= {spans} (T5: 100)."
      )

  def special_tokens(self, cfg):
    from zoo.data import span_corruption as data  # noqa: PLC0415

    return data.sentinel_tokens(cfg.num_sentinels)

  def records(self, cfg, split):
    from zoo.data import span_corruption as data  # noqa: PLC0415

    return data.documents(cfg, split), {}

  def texts(self, record):
    return (record,)

  def dataset(self, records, tok, *, cfg, info, meta, train, common):
    from zoo.data import span_corruption as data  # noqa: PLC0415

    info.update(noise_density=cfg.noise_density,
                mean_noise_span_length=cfg.mean_noise_span_length)
    return data.build(records, tok, cfg=cfg, **common)


registry.register_task(SpanCorruption)
