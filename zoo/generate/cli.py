"""``python -m zoo.generate``: text from a trained run or a pretrained folder.

Examples::

  # the GPT trained by `make demo` (a train.py workdir; --config names its data/tokenizer)
  python -m zoo.generate --checkpoint runs/demo --config configs/gpt.py:demo --prompt "def "
  # a Hugging Face GPT-2 folder, sampling
  python -m zoo.generate --checkpoint gpt2/ --prompt "Hello" --sample --top_p 0.9 --seed 1
  # translation: a Marian (Opus-MT) folder, or a workdir trained on the translation task
  python -m zoo.generate --checkpoint opus-mt-en-de/ --source "How are you?" --num_beams 4
  # question answering: a BERT QA run (configs/bert_qa.py) or a *ForQuestionAnswering folder;
  # prints the answer, then its start and end character offsets in the context
  python -m zoo.generate --checkpoint runs/qa-minilm --question "What does dumps return?" \
      --context "dumps(): Return the JSON string of obj. loads(): Parse a JSON document."

``--checkpoint`` is a train.py workdir (``checkpoints/<step>/``: the model is rebuilt from
the fingerprint saved with the checkpoint, the tokenizer from the run config, read from
``<workdir>/config.json`` or ``--config``), a Hugging Face folder or a zoo checkpoint folder
(``zoo.from_pretrained``, tokenizer ``zoo.load_tokenizer``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import runpy
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from zoo import registry
from zoo.generate import decoder, seq2seq, spans
from zoo.pretrained.checkpoint_io import read_json_object


@dataclasses.dataclass
class Loaded:
  """A model ready to generate, with what its checkpoint says about special tokens."""

  model: Any
  params: Any
  tokenizer: Any  # encode(str) -> ids / decode(ids) -> str, or None
  where: str  # the checkpoint path, for messages
  specials_in_encode: bool  # tokenizer.encode adds BOS/EOS itself (Hugging Face tokenizers)
  bos_id: int | None = None
  eos_id: int | None = None
  pad_id: int = 0
  decoder_start_id: int | None = None
  suppress_ids: tuple[int, ...] = ()
  forced_eos: bool = False
  forced_bos_id: int | None = None  # generation_config.json forced_bos_token_id (BART, mBART-50)
  min_length: int = 0
  no_repeat_ngram_size: int = 0
  early_stopping: Any = False
  max_new_tokens: int | None = None  # generation_config.json max_length less the start token
  num_beams: int = 1
  length_penalty: float = 1.0
  stop_ids: tuple[int, ...] = ()  # every EOS id a GPT stops at (Llama 3 lists several)
  data: Any = None  # a workdir's run config data section (window sizes of question answering)

  @property
  def stops(self):
    """What a GPT stops at: every listed EOS id, else ``eos_id``."""
    return self.stop_ids or self.eos_id

  @property
  def family(self):
    """The model's :class:`zoo.registry.Family`."""
    return registry.family_of(self.model)


# ----------------------------------------------------------------------------------------------
# Loading.


def _first(value):
  return value[0] if isinstance(value, (list, tuple)) else value


def load_run_config(spec: str):
  """``configs/gpt.py:demo`` (a config file and its argument) -> the run ConfigDict."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"--config {spec!r}: {path} is not a file (expected configs/<name>.py[:arg]).")
  return runpy.run_path(path)["get_config"](arg or None)


def load_workdir(workdir: str, config=None, step: int | None = None) -> Loaded:
  """A train.py run directory -> :class:`Loaded` (parameters of checkpoint ``step``, default last).

  Args:
    workdir: the ``--workdir`` of train.py.
    config: the run config (ConfigDict or ``configs/x.py:arg``); None reads
      ``<workdir>/config.json`` if there is one. Only its data section is used: it names the
      tokenizer.
    step: which checkpoint; None = the latest.
  """
  from zoo import registry
  from zoo.pretrained import workdir as workdir_lib

  ckpt = workdir_lib.read(workdir, step)  # the saved model config; LoRA adapters merged
  model, params = registry.build(ckpt.config), ckpt.params

  if isinstance(config, str):
    config = load_run_config(config)
  run_config = os.path.join(workdir, workdir_lib.RUN_CONFIG)
  if config is None and os.path.exists(run_config):
    import ml_collections

    config = ml_collections.ConfigDict(read_json_object(run_config))
  tokenizer = None
  if config is not None:
    import zoo.data

    tokenizer = zoo.data.make_tokenizer(config.data)
  get = lambda name, default=None: getattr(tokenizer, name, default)  # noqa: E731
  pad = get("pad_id", None)
  return Loaded(
      model=model, params=params, tokenizer=tokenizer, where=workdir, specials_in_encode=False,
      bos_id=get("bos_id"), eos_id=get("eos_id"),
      pad_id=int(pad if pad is not None else getattr(model.config, "pad_id", 0)),
      decoder_start_id=get("bos_id"), data=None if config is None else config.data,
  )


def load_pretrained(path: str) -> Loaded:
  """A Hugging Face or zoo checkpoint folder -> :class:`Loaded` (generation settings included)."""
  from zoo import pretrained

  model, params = pretrained.from_pretrained(path)
  tokenizer = pretrained.load_tokenizer(path, required=False)  # without one, ids still work
  hf = {**read_json_object(os.path.join(path, "config.json"), missing_ok=True),
        **read_json_object(os.path.join(path, "generation_config.json"), missing_ok=True)}
  eos = _first(hf.get("eos_token_id"))
  pad = hf.get("pad_token_id")
  pad = pad if pad is not None else (eos if eos is not None else getattr(model.config, "pad_id", 0))
  bad = tuple(w[0] for w in hf.get("bad_words_ids") or () if len(w) == 1)
  if hf.get("model_type") == "marian" and "bad_words_ids" not in hf:
    bad = (pad,)  # Opus-MT checkpoints ship generation_config.json with bad_words_ids [[pad]]
  return Loaded(
      model=model, params=params, tokenizer=tokenizer, where=path, specials_in_encode=True,
      bos_id=hf.get("bos_token_id"), eos_id=eos, pad_id=int(pad),
      decoder_start_id=hf.get("decoder_start_token_id", hf.get("bos_token_id")),
      suppress_ids=bad, forced_eos=hf.get("forced_eos_token_id") is not None,
      num_beams=int(hf.get("num_beams") or 1), length_penalty=float(hf.get("length_penalty", 1.0)),
      forced_bos_id=hf.get("forced_bos_token_id"), min_length=int(hf.get("min_length") or 0),
      no_repeat_ngram_size=int(hf.get("no_repeat_ngram_size") or 0),
      early_stopping=hf.get("early_stopping", False),
      max_new_tokens=hf["max_length"] - 1 if hf.get("max_length") else None,
      stop_ids=tuple(int(t) for t in hf["eos_token_id"])
      if isinstance(hf.get("eos_token_id"), list) else (),
  )


def load(checkpoint: str, *, config=None, step: int | None = None) -> Loaded:
  """A workdir (has ``checkpoints/``), a Hugging Face folder or a zoo checkpoint folder."""
  checkpoint = os.fspath(checkpoint)
  if not os.path.isdir(checkpoint):
    raise ValueError(f"--checkpoint {checkpoint} is not a directory.")
  from zoo.pretrained import workdir as workdir_lib

  if workdir_lib.is_workdir(checkpoint):
    return load_workdir(checkpoint, config, step)
  return load_pretrained(checkpoint)


def quantized(loaded: Loaded, scheme: str) -> Loaded:
  """``loaded`` with its projections quantized (``zoo.quantize``: weight-only, per channel)."""
  from zoo.quantize import quantize  # noqa: PLC0415  (lazy: qwix only when asked for)

  model, params = quantize(loaded.model, loaded.params, scheme)
  return dataclasses.replace(loaded, model=model, params=params)


# ----------------------------------------------------------------------------------------------
# Text in, text out.


def _encode(loaded: Loaded, text: str | list[int], what: str) -> list[int]:
  if not isinstance(text, str):
    return [int(t) for t in text]
  if loaded.tokenizer is None:
    raise ValueError(
        f"{loaded.where} has no tokenizer, so the {what} text cannot be encoded. Give token ids "
        f"instead (--{what}_ids 5,17,42), or for a train.py workdir the run config that names "
        "the tokenizer (--config configs/<file>.py:<arg>)."
    )
  if not text:
    raise ValueError(f"the {what} is empty; give some text to start from.")
  return list(loaded.tokenizer.encode(text))


def _decode(loaded: Loaded, ids: list[int]) -> str | list[int]:
  return ids if loaded.tokenizer is None else loaded.tokenizer.decode(ids)


def complete(
    loaded: Loaded,
    prompt: str | list[int],
    *,
    max_new_tokens: int = 64,
    stop: Sequence[str] = (),
    on_text: Callable[[str], None] | None = None,
    **sampling,
):
  """The prompt continued by a GPT: text (or ids when ``prompt`` is ids and no tokenizer).

  Args:
    loaded: from :func:`load`.
    prompt: text, or token ids.
    max_new_tokens: tokens to add (capped by the context).
    stop: stop strings: generation ends at the first of them in the new text, which is cut
      before it (needs a tokenizer).
    on_text: streaming callback, called with each new piece of text as tokens are produced
      (the prompt first); the pieces join to the returned text.
    **sampling: ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty``,
      ``seed`` of :func:`zoo.generate.generate`.
  """
  lm = loaded.family.causal_lm
  if lm is None:
    raise ValueError(
        f"{loaded.where} holds a {loaded.family.name} model; --prompt needs a decoder-only "
        f"language model ({', '.join(registry.capable('causal_lm'))}). For a translation model "
        "use --source."
    )
  ids = _encode(loaded, prompt, "prompt")
  if isinstance(prompt, str) and not loaded.specials_in_encode and loaded.bos_id is not None:
    ids = [loaded.bos_id] + ids  # zoo LM documents start with BOS
  if not ids:
    raise ValueError("the prompt is empty; give at least one token.")
  stop = [s for s in stop if s]
  if stop and loaded.tokenizer is None:
    raise ValueError(
        f"stop strings {stop} need a tokenizer to read the text, and {loaded.where} has none; "
        "drop --stop or give a checkpoint (or --config) with a tokenizer."
    )
  context = lm.context_length(loaded.model.config)
  if context is not None and len(ids) <= context:
    max_new_tokens = min(max_new_tokens, context - len(ids) + 1)
  prompt_ids = ids[1:] if ids[0] == loaded.bos_id and not loaded.specials_in_encode else ids
  kw = dict(max_new_tokens=max_new_tokens, eos_id=loaded.stops, pad_id=loaded.pad_id, **sampling)
  if not stop and on_text is None:  # one compiled program, no host loop
    new = decoder.generate(loaded.model, loaded.params, [ids], **kw)
    return _decode(loaded, prompt_ids + decoder.until_eos(new[0], loaded.stops))
  return _stream_text(loaded, ids, prompt_ids, stop, on_text, kw)


def _stream_text(loaded: Loaded, ids, prompt_ids, stop, on_text, kw):
  """:func:`complete` through :func:`zoo.generate.stream`: callback and stop strings."""
  emit = on_text or (lambda _: None)
  steps = decoder.stream(loaded.model, loaded.params, [ids], **kw)
  new = []
  if loaded.tokenizer is None:  # ids in, ids out
    emit(" ".join(map(str, prompt_ids)))
    for token_B in steps:
      if not decoder.until_eos([int(token_B[0])], loaded.stops):
        break
      new.append(int(token_B[0]))
      emit(f" {new[-1]}")
    return prompt_ids + new
  head = _decode(loaded, prompt_ids)
  emit(head)
  shown, text = 0, ""
  # Text that could still become the start of a stop string is held back until it cannot.
  hold = max((len(s) for s in stop), default=1) - 1
  for token_B in steps:
    if not decoder.until_eos([int(token_B[0])], loaded.stops):
      break  # a stop id
    new.append(int(token_B[0]))
    # The continuation as it reads after the prompt: tokenizers that drop a word's leading
    # space at the start of a text (SentencePiece, word-level) need the prompt in front.
    text = _decode(loaded, prompt_ids + new)[len(head):]
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    if cut >= 0:
      emit(text[shown:cut])
      steps.close()
      return head + text[:cut]
    ready = len(text) - hold
    while ready > shown and text[ready - 1] == "\ufffd":  # an incomplete UTF-8 sequence
      ready -= 1
    if ready > shown:
      emit(text[shown:ready])
      shown = ready
  emit(text[shown:])
  return head + text


def translate(
    loaded: Loaded,
    source: str | list[int],
    *,
    max_new_tokens: int | None = None,
    num_beams: int | None = None,
    length_penalty: float | None = None,
):
  """The encoder-decoder's translation of ``source`` (beam search; greedy with one beam).

  Unset options take the checkpoint's generation settings (``generation_config.json`` and
  ``config.json``: beams, length penalty, early stopping, forced BOS / EOS, ``min_length``,
  ``no_repeat_ngram_size``, ``max_length``); ``max_new_tokens`` defaults to 64 without one.
  """
  if max_new_tokens is None:
    max_new_tokens = loaded.max_new_tokens or 64
  s2s = loaded.family.seq2seq
  if s2s is None:
    raise ValueError(
        f"{loaded.where} holds a {loaded.family.name} model; --source needs an encoder-decoder "
        f"translation model ({', '.join(registry.capable('seq2seq'))}). For a decoder-only "
        "language model use --prompt."
    )
  if isinstance(source, str) and loaded.data is not None:
    source = loaded.data.get("source_prefix", "") + source  # what the run's sources began with
  ids = _encode(loaded, source, "source")
  if isinstance(source, str) and not loaded.specials_in_encode and loaded.eos_id is not None:
    ids = ids + [loaded.eos_id]  # zoo translation sources end with EOS
  cfg = loaded.model.config
  start = loaded.decoder_start_id
  start = s2s.start_id(cfg) if start is None else start
  if start is None:
    raise ValueError(f"{loaded.where} names no decoder start token (BOS / decoder_start_token_id).")
  target_length = s2s.target_length(cfg)
  if target_length is not None:  # the start token takes one of the decoder's positions
    max_new_tokens = min(max_new_tokens, target_length - 1)
  out = seq2seq.generate(
      loaded.model, loaded.params, [ids], max_new_tokens=max_new_tokens,
      decoder_start_id=start, eos_id=loaded.eos_id,
      num_beams=loaded.num_beams if num_beams is None else num_beams,
      length_penalty=loaded.length_penalty if length_penalty is None else length_penalty,
      suppress_ids=loaded.suppress_ids, forced_eos=loaded.forced_eos,
      forced_bos_id=loaded.forced_bos_id, min_length=loaded.min_length,
      no_repeat_ngram_size=loaded.no_repeat_ngram_size, early_stopping=loaded.early_stopping,
  )
  return _decode(loaded, decoder.until_eos(out[0], loaded.eos_id))


@functools.partial(jax.jit, static_argnames="model")
def _apply_windows(model, params, input_ids, token_type_ids, attention_mask):
  return model.apply({"params": params}, input_ids, token_type_ids=token_type_ids,
                     attention_mask=attention_mask)


def answer(
    loaded: Loaded,
    question: str,
    context: str,
    *,
    seq_len: int = 384,
    doc_stride: int = 128,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> spans.Span | None:
  """The best answer span to ``question`` in ``context`` from a question-answering model.

  The context is read in overlapping windows of ``seq_len`` tokens (``doc_stride`` shared),
  as in training (``zoo.data.qa``); the span is decoded over all of them
  (``zoo.generate.spans``). Returns None when no span fits (an empty context window).
  """
  from zoo.data import qa  # noqa: PLC0415 - only this command reads windows
  from zoo.data import tokenizers as data_tokenizers  # noqa: PLC0415

  tok = loaded.tokenizer
  if not isinstance(tok, (data_tokenizers.HFTokenizer, data_tokenizers.ByteTokenizer)):
    tok = data_tokenizers.tokenizer_from_file(loaded.where)  # the folder's, with offsets
  example = qa.QAExample(id="cli", question=question, context=context)
  windows, _ = qa.make_windows([example], tok, seq_len=seq_len, doc_stride=doc_stride)
  stack = lambda name: np.stack([getattr(w, name) for w in windows])  # noqa: E731
  out = _apply_windows(loaded.model, loaded.params, stack("input_ids"), stack("token_type_ids"),
                       stack("attention_mask"))
  if not isinstance(out, dict) or "start_logits" not in out:
    raise ValueError(
        f"{loaded.where} holds a model without a question-answering head (start and end "
        "logits); load a *ForQuestionAnswering checkpoint or train one with "
        "configs/bert_qa.py."
    )
  best = spans.best_spans(
      list(np.asarray(out["start_logits"])), list(np.asarray(out["end_logits"])),
      [w.offsets for w in windows], context, n_best=n_best, max_answer_length=max_answer_length,
  )
  return best[0] if best else None


def _ids(text: str | None) -> list[int] | None:
  if text is None:
    return None
  try:
    return [int(t) for t in text.replace(",", " ").split()]
  except ValueError as e:
    raise ValueError(f"token ids must be integers separated by commas; got {text!r}.") from e


def _print_answer(loaded: Loaded, args) -> int:
  """``--question``: the answer text, then its start and end character offsets in the context."""
  if not args.context:
    raise ValueError("--question needs --context: the text that holds the answer.")
  data = loaded.data if loaded.data is not None else {}
  pick = lambda given, key, default: given if given is not None else data.get(key, default)  # noqa: E731
  span = answer(loaded, args.question, args.context,
                seq_len=int(pick(args.seq_len, "seq_len", 384)),
                doc_stride=int(pick(args.doc_stride, "doc_stride", 128)))
  if span is None:
    print("(no answer span)")
  else:
    print(f"{span.text}\t{span.start_char}\t{span.end_char}")
  return 0


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m zoo.generate", description=__doc__.split("\n")[0])
  p.add_argument("--checkpoint", required=True, help="train.py workdir, HF or zoo folder")
  p.add_argument("--config", help="run config of a workdir, e.g. configs/gpt.py:demo")
  p.add_argument("--step", type=int, help="workdir checkpoint step (default: latest)")
  what = p.add_mutually_exclusive_group(required=True)
  what.add_argument("--prompt", help="GPT: text to continue")
  what.add_argument("--prompt_ids", help="GPT: token ids to continue (no tokenizer needed)")
  what.add_argument("--source", help="encoder-decoder (Transformer, T5): text to translate "
                    "or summarise")
  what.add_argument("--source_ids", help="encoder-decoder: source token ids")
  what.add_argument("--question", help="BERT question answering: a question about --context")
  p.add_argument("--context", help="the text --question asks about (its answer is a span of it)")
  p.add_argument("--seq_len", type=int,
                 help="question answering: window length (default: the run's, else 384)")
  p.add_argument("--doc_stride", type=int,
                 help="question answering: tokens shared by windows (default: the run's, else 128)")
  p.add_argument("--max_new_tokens", type=int,
                 help="default 64 (encoder-decoders: the checkpoint's max_length - 1, else 64)")
  p.add_argument("--sample", action="store_true", help="sample instead of greedy (GPT)")
  p.add_argument("--temperature", type=float, default=1.0)
  p.add_argument("--top_k", type=int, default=0)
  p.add_argument("--top_p", type=float, default=1.0)
  p.add_argument("--repetition_penalty", type=float, default=1.0,
                 help="GPT: > 1 discourages tokens already in the prompt/output (HF semantics)")
  p.add_argument("--stop", action="append", default=[],
                 help="GPT: stop at this string (repeatable); the output is cut before it")
  p.add_argument("--stream", action="store_true", help="GPT: print tokens as they come")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--num_beams", type=int, help="encoder-decoder (default: the checkpoint's or 1)")
  p.add_argument("--length_penalty", type=float)
  p.add_argument("--forced_bos_id", type=int, help="encoder-decoder: the first generated token "
                 "(mBART-50: the target language code's id; default: the checkpoint's)")
  p.add_argument("--min_length", type=int, help="encoder-decoder: EOS barred below this length, "
                 "start token counted (default: the checkpoint's)")
  p.add_argument("--no_repeat_ngram_size", type=int,
                 help="encoder-decoder: no n-gram of this size twice (default: the checkpoint's)")
  p.add_argument("--quantize", choices=("int8", "int4", "fp8"),
                 help="generate with weight-only quantized projections (zoo.quantize, qwix)")
  args = p.parse_args(argv)
  try:
    loaded = load(args.checkpoint, config=args.config, step=args.step)
    if args.quantize:
      loaded = quantized(loaded, args.quantize)
    if args.question is not None:
      return _print_answer(loaded, args)
    if args.prompt is not None or args.prompt_ids is not None:
      printer = (lambda piece: print(piece, end="", flush=True)) if args.stream else None
      out = complete(
          loaded, args.prompt if args.prompt is not None else _ids(args.prompt_ids),
          max_new_tokens=args.max_new_tokens or 64, do_sample=args.sample,
          temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
          repetition_penalty=args.repetition_penalty, stop=args.stop, on_text=printer,
      )
      if args.stream:
        print()
        return 0
    else:
      for name in ("forced_bos_id", "min_length", "no_repeat_ngram_size"):
        if getattr(args, name) is not None:  # the command line overrides the checkpoint
          setattr(loaded, name, getattr(args, name))
      out = translate(
          loaded, args.source if args.source is not None else _ids(args.source_ids),
          max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
          length_penalty=args.length_penalty,
      )
  except (ValueError, OSError) as e:  # expected: bad arguments, files, checkpoints
    print(f"python -m zoo.generate: error: {e}", file=sys.stderr)
    return 2
  print(out if isinstance(out, str) else " ".join(map(str, out)))
  return 0
