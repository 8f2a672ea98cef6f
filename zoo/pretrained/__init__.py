"""Pretrained weights in and out: Hugging Face folders, zoo checkpoints and ViT ``.npz`` files.

``model, params = from_pretrained(path)`` reads a Hugging Face folder (``GPT2LMHeadModel``,
``GPT2Model``, ``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``, ``Bert*``,
``ViT*``, ``MarianMTModel``), a zoo checkpoint or a big_vision ViT ``.npz``;
``save_pretrained(model, params, path)`` writes the Hugging Face layout;
``load_tokenizer(path)`` loads the tokenizer files next to the weights. One converter module
per source format declares a :class:`Converter` record with an explicit key map (see
``converter.py`` and ``keymap.py``); ``workdir.py`` reads train.py runs. CLI: ``python -m
zoo.pretrained convert IN OUT``.
"""

from zoo.pretrained.api import (
    from_pretrained,
    save_pretrained,
    save_zoo,
    supported_architectures,
)
from zoo.pretrained.assemble import param_shardings
from zoo.pretrained.converter import Converter
from zoo.pretrained.tokenizer import Tokenizer, load_tokenizer

__all__ = [
    "from_pretrained",
    "save_pretrained",
    "load_tokenizer",
    "Tokenizer",
    "save_zoo",
    "param_shardings",
    "Converter",
    "supported_architectures",
]
