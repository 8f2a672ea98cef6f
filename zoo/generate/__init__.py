"""Decoding: compiled sampling for causal LMs, greedy and beam search for encoder-decoders.

What a model can decode is a typed capability of its family (``zoo.registry.CausalLM`` /
``zoo.registry.Seq2Seq``), not its name or its config's fields.

* :func:`generate` — causal LMs (GPT, Llama): prefill + cached steps in one jitted
  ``while_loop``; ragged prompts (left-padded to power-of-two buckets), stop ids, greedy /
  temperature / top-k / top-p, repetition penalty. :func:`stream` yields the same tokens step
  by step (host loop).
* :func:`translate_ids` (``zoo.generate.seq2seq.generate``) — encoder-decoders (Transformer,
  Marian): encoder once, cached decoder, greedy or Hugging Face-exact beam search.
* ``python -m zoo.generate --checkpoint DIR --prompt TEXT`` (GPT) or ``--source TEXT``
  (translation) prints generated text; see :mod:`zoo.generate.cli`.
"""

from zoo.generate.decoder import TRACE_COUNTS, bucket_length, generate, stream
from zoo.generate.sampling import (
    Sampling,
    filter_logits,
    next_token,
    repetition_penalty,
    top_k_filter,
    top_p_filter,
)
from zoo.generate.seq2seq import generate as translate_ids

__all__ = [
    "TRACE_COUNTS",
    "Sampling",
    "bucket_length",
    "filter_logits",
    "generate",
    "next_token",
    "repetition_penalty",
    "stream",
    "top_k_filter",
    "top_p_filter",
    "translate_ids",
]
