"""Seeing inside the models: small experiments that each write a PNG and the JSON behind it.

``python -m zoo.analysis <what> --out DIR``; ``<what>`` is one of

* ``scaling``: why attention logits are divided by ``sqrt(d)`` (:mod:`zoo.analysis.scaling`);
* ``positions``: sinusoidal, learned and rotary position encodings
  (:mod:`zoo.analysis.positions`);
* ``attention``: per-layer / per-head attention maps of a checkpoint of any family
  (:mod:`zoo.analysis.attention_maps`, which picks the view by the family's declared inputs;
  images: maps and attention rollout in :mod:`zoo.analysis.vit_attention`; source and target:
  encoder-decoder cross-attention in :mod:`zoo.analysis.seq2seq_attention`; all of them read
  :mod:`zoo.analysis.attention_weights`);
* ``embeddings``: input embeddings, word analogies and sentence similarity
  (:mod:`zoo.analysis.embeddings`);
* ``lowpass``: a ViT and a CNN trained on the offline digits, the high-frequency amplitude of
  their feature maps by depth (Park & Kim 2022; :mod:`zoo.analysis.lowpass`).

Every experiment is also a function returning the numbers as a dict, so tests call it directly.
"""

from zoo.analysis.common import AnalysisError

__all__ = ["AnalysisError"]
