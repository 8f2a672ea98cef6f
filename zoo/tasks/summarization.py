"""Abstractive summarization: a document in, its summary out, teacher-forced like translation.

Data (``zoo.data.summarization``): offline, the standard library's PEP 257 docstrings (the body
is the document, the first line its summary; split by module); TFDS ``cnn_dailymail``
(``article`` -> ``highlights``), ``xsum`` (``document`` -> ``summary``) and any dataset with two
text features (``source_key`` / ``target_key``). ``source_prefix`` is prepended to every
document (``"summarize: "`` for released T5 models). Batch: translation's (``src_ids [B, S]``,
``tgt_in_ids`` / ``tgt_out_ids`` / ``weights [B, T]``), the decoder starting from the
tokenizer's BOS, or from pad when it has none (T5). Metrics: loss, nll, perplexity, accuracy,
and ROUGE-1/2/L/Lsum (``rouge-score``, stemmed, F-measure x 100) of the greedy or beam-search
summaries of the first ``config.eval.decode_batches`` evaluation batches
(``config.eval.num_beams``, ``config.eval.length_penalty``), beside the Lead-n baseline's
(``lead_rouge1`` ...: the document's first ``lead_sentences`` sentences) on the same references.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zoo import registry
from zoo.data import offline
from zoo.data import summarization as data
from zoo.tasks import base, metrics
from zoo.tasks.translation import Translation

_DATA = {k: v for k, v in base.TEXT_DATA.items() if k not in ("seq_len", "text_keys")}


class Summarization(Translation):
  """Seq2seq summarization: translation's batches and loss, ROUGE and the lead baseline at eval."""

  name = "summarization"

  def data_defaults(self):
    return {
        **_DATA, "tfds_name": "cnn_dailymail", "tokenizer": "bpe", "src_len": 512,
        "tgt_len": 64, "source_key": None, "target_key": None, "source_prefix": "",
        "lead_sentences": None, "bucket_window": 0, "pad_to_multiple": 8,
    }

  def check_data(self, cfg):
    super().check_data(cfg)
    data.check_lead_sentences(cfg.lead_sentences)
    if cfg.tgt_len < 2:
      raise ValueError(
          f"tgt_len={cfg.tgt_len} leaves no room for a summary: the target row holds the start "
          "token (or EOS) and at least one summary token; set tgt_len >= 2 (64 or 128 usual)."
      )

  def records(self, cfg, split):
    meta = {"lead_sentences": data.lead_count(cfg)}
    if cfg.source == "tfds":
      pairs, keys = data.tfds_pairs(cfg, split)
      return pairs, {**meta, "summary_keys": keys}
    if cfg.path:
      return data.tsv_pairs(cfg.path, split, cfg.offline_eval_fraction), meta
    return data.offline_pairs(split, cfg.offline_eval_fraction), meta

  def tokenizer_key(self, cfg):
    return (cfg.source_key, cfg.target_key)

  def dataset(self, records, tok, *, cfg, info, meta, train, common):
    from zoo.data import translation as translation_data  # noqa: PLC0415 - Grain only once data is built

    start = decoder_start_id(tok)
    prefix = cfg.source_prefix
    pairs = records
    if prefix:
      pairs = offline.LazySeq(len(records), lambda i: (prefix + records[i][0], records[i][1]))
    info.update(src_len=cfg.src_len, tgt_len=cfg.tgt_len, decoder_start_id=start,
                source_prefix=prefix)
    return translation_data.build(pairs, tok, cfg=cfg, start_id=start, **common)

  def decode_metrics(self, model, params, dataset, info, eval_cfg):
    decode = int(eval_cfg.get("decode_batches", 0))
    if decode <= 0 or info.get("tokenizer") is None:
      return {}
    hyps, refs, sources = decode_summaries(
        model, params, dataset, info, num_batches=decode,
        num_beams=int(eval_cfg.get("num_beams", 1)),
        length_penalty=float(eval_cfg.get("length_penalty", 1.0)),
    )
    if not refs:
      return {}
    out = metrics.rouge([sentence_lines(h) for h in hyps], [sentence_lines(r) for r in refs])
    out.update(lead_scores(sources, refs, int(info.get("lead_sentences") or 1)))
    return out


def decoder_start_id(tok) -> int:
  """The first decoder input: the tokenizer's BOS, or pad when it has none (T5)."""
  return int(tok.pad_id if tok.bos_id is None else tok.bos_id)


def sentence_lines(text: str) -> str:
  """``text`` one sentence per line (its own lines split further into sentences), the form
  ROUGE-Lsum reads; the other ROUGEs ignore lines."""
  return "\n".join(s for line in text.splitlines() for s in offline.sentences(line)) or text


def lead_scores(sources: Sequence[str], references: Sequence[str], n: int = 1) -> dict[str, float]:
  """``lead_rouge1`` ...: ROUGE of the Lead-``n`` summaries of ``sources`` against
  ``references``."""
  leads = [data.lead(s, n) for s in sources]
  scores = metrics.rouge(leads, [sentence_lines(r) for r in references])
  return {f"lead_{k}": v for k, v in scores.items()}


def decode_summaries(model, params, dataset, info: dict, *, num_batches: int, num_beams: int = 1,
                     length_penalty: float = 1.0) -> tuple[list[str], list[str], list[str]]:
  """``(hypotheses, references, documents)`` of the first ``num_batches`` batches of
  ``dataset``, detokenised; padding rows are left out.

  Hypotheses are ``zoo.generate.translate_ids`` from ``info["decoder_start_id"]``; references
  are the batch's ``tgt_out_ids`` up to EOS; documents its ``src_ids`` up to EOS, without the
  ``source_prefix``.
  """
  from zoo.generate import translate_ids  # noqa: PLC0415 - decoding only when evaluating
  from zoo.generate.decoder import until_eos  # noqa: PLC0415

  tok, eos = info["tokenizer"], info.get("eos_id")
  prefix = (info.get("source_prefix") or "").strip()
  positions = registry.seq2seq(model, "ROUGE evaluation").target_length(model.config)
  room = None if positions is None else positions - 1  # one position for the start token
  hyps, refs, sources = [], [], []
  for i, local in enumerate(dataset):
    if i >= num_batches:
      break
    length = local["tgt_out_ids"].shape[1]
    out = translate_ids(
        model, params, np.asarray(local["src_ids"]),
        max_new_tokens=length if room is None else min(length, room),
        decoder_start_id=int(info["decoder_start_id"]), eos_id=eos, num_beams=num_beams,
        length_penalty=length_penalty,
    )
    real = np.asarray(local["weights"]).sum(-1) > 0
    for hyp, ref, src, keep in zip(out, np.asarray(local["tgt_out_ids"]),
                                   np.asarray(local["src_ids"]), real, strict=True):
      if keep:
        hyps.append(tok.decode(until_eos(hyp, eos)))
        refs.append(tok.decode(until_eos(ref, eos)))
        document = tok.decode(until_eos(src, eos))
        if prefix and document.startswith(prefix):
          document = document[len(prefix):].lstrip()
        sources.append(document)
  return hyps, refs, sources


registry.register_task(Summarization)
