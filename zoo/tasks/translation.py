"""Translation (sequence to sequence with teacher forcing): ``tgt_in_ids`` in, ``tgt_out_ids``
predicted.

Data: sentence pairs (offline: numbers written as words in two languages, by ``num2words``, or
a TSV file; TFDS: ``wmt14_translate/de-en`` and any dataset with one feature per language).
Batch: ``src_ids [B, S]``, ``tgt_in_ids`` / ``tgt_out_ids`` / ``weights [B, T]``. Metrics: loss,
nll, perplexity, accuracy, and corpus BLEU (sacrebleu) of the decoded first
``config.eval.decode_batches`` evaluation batches.
"""

from __future__ import annotations

import numpy as np

from zoo import registry
from zoo.data import offline
from zoo.data import tfds_sources as tfds_src
from zoo.tasks import base, metrics

# Text keys the languages replace: the language names are the text fields.
_DATA = {k: v for k, v in base.TEXT_DATA.items() if k not in ("seq_len", "text_keys")}


class Translation(base.TeacherForced):
  """Seq2seq with teacher forcing: ``tgt_in_ids`` in, ``tgt_out_ids`` predicted."""

  name = "translation"

  def data_defaults(self):
    return {
        **_DATA, "tfds_name": "wmt14_translate/de-en", "tokenizer": "bpe", "src_len": 64,
        "tgt_len": 64, "source_lang": "en", "target_lang": None, "max_number": 100000,
        "bucket_window": 0, "pad_to_multiple": 8,
    }

  def check_data(self, cfg):
    if cfg.bucket_window < 0:
      raise ValueError(f"bucket_window must be >= 0 (0 = off); got {cfg.bucket_window}.")
    if cfg.pad_to_multiple < 1:
      raise ValueError(f"pad_to_multiple must be >= 1; got {cfg.pad_to_multiple}.")

  def records(self, cfg, split):
    if cfg.source == "tfds":
      pairs, langs = tfds_src.translation_pairs(cfg, split)
      return pairs, {"languages": langs}
    langs = (cfg.source_lang, cfg.target_lang or "fr")
    frac = cfg.offline_eval_fraction
    if cfg.path:
      return offline.tsv_pairs(cfg.path, split, frac), {"languages": langs}
    return offline.number_pairs(cfg.max_number, *langs, split, frac), {"languages": langs}

  def texts(self, record):
    return record

  def tokenizer_key(self, cfg):
    return (cfg.source_lang, cfg.target_lang, cfg.max_number)

  def dataset(self, records, tok, *, cfg, info, meta, train, common):
    from zoo.data import translation as translation_data  # noqa: PLC0415 - Grain only once data is built

    source_lang, target_lang = meta["languages"]
    info.update(src_len=cfg.src_len, tgt_len=cfg.tgt_len, source_lang=source_lang,
                target_lang=target_lang)
    return translation_data.build(records, tok, cfg=cfg, **common)

  def decode_metrics(self, model, params, dataset, info, eval_cfg):
    decode = int(eval_cfg.get("decode_batches", 0))
    if decode <= 0:
      return {}
    return translation_bleu(
        model, params, dataset, info, num_batches=decode,
        num_beams=int(eval_cfg.get("num_beams", 1)),
    )


def translation_bleu(model, params, dataset, info: dict, *, num_batches: int, num_beams: int):
  """Corpus BLEU (sacrebleu) of greedy / beam-search translations of the first eval batches.

  Hypotheses and references are detokenised with the run's tokenizer; the reference is the
  target side of the batch (``tgt_out_ids`` up to EOS).
  """
  from zoo.generate import translate_ids  # noqa: PLC0415 - decoding only when evaluating
  from zoo.generate.decoder import until_eos  # noqa: PLC0415

  tok = info.get("tokenizer")
  if tok is None or num_batches <= 0:
    return {}
  eos = info.get("eos_id")
  positions = registry.seq2seq(model, "BLEU evaluation").target_length(model.config)
  room = None if positions is None else positions - 1  # one position for the start token
  hyps, refs = [], []
  for i, local in enumerate(dataset):
    if i >= num_batches:
      break
    length = local["tgt_out_ids"].shape[1]
    out = translate_ids(
        model, params, np.asarray(local["src_ids"]),
        max_new_tokens=length if room is None else min(length, room),
        decoder_start_id=int(info["bos_id"]), eos_id=eos, num_beams=num_beams,
    )
    for hyp, ref in zip(out, np.asarray(local["tgt_out_ids"]), strict=True):
      hyps.append(tok.decode(until_eos(hyp, eos)))  # pad follows EOS in both
      refs.append(tok.decode(until_eos(ref, eos)))
  return {"bleu": metrics.corpus_bleu(hyps, refs)} if refs else {}


registry.register_task(Translation)
