"""Reading and writing tensor files: safetensors (without torch), PyTorch ``.bin``, ``.npz``;
the JSON files next to them (:func:`read_json`).

Safetensors are read lazily through ``safetensors.safe_open(..., framework="numpy")``; dtypes
numpy itself lacks (bfloat16, float8) are read straight from the file's JSON header and byte
ranges with the ``ml_dtypes`` types JAX already depends on. ``.bin`` files need torch and are
only opened when no safetensors file is present.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import ml_dtypes
import numpy as np

# safetensors dtype tag <-> numpy dtype (ml_dtypes for the ones numpy lacks).
_ST_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_ST_TAGS = {v: k for k, v in _ST_DTYPES.items()}
_NUMPY_NATIVE = {"F64", "F32", "F16", "I64", "I32", "I16", "I8", "U8", "BOOL"}

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PT_BIN = "pytorch_model.bin"
PT_BIN_INDEX = "pytorch_model.bin.index.json"


def read_json(path: str | os.PathLike, *, missing_ok: bool = False) -> Any:
  """The parsed contents of a JSON file (``config.json``, ``tokenizer_config.json``, ...).

  Args:
    path: the file.
    missing_ok: return ``{}`` for a file that does not exist (optional files such as
      ``special_tokens_map.json``) instead of raising.

  Raises:
    FileNotFoundError: ``path`` does not exist (and not ``missing_ok``); the message names it.
    ValueError: the file is not valid JSON; the message names the file, line and column.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    if missing_ok:
      return {}
    raise FileNotFoundError(f"{path} does not exist.")
  with open(path, encoding="utf-8") as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      # json's own message omits the file, which is what a user needs to go and fix it.
      raise ValueError(
          f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}."
      ) from e


def read_json_object(path: str | os.PathLike, *, missing_ok: bool = False) -> dict[str, Any]:
  """:func:`read_json` of a file that must hold one JSON object (``config.json`` ...).

  Raises:
    ValueError: the file holds a list, a string or a number; the message names the file and
      what it holds.
  """
  data = read_json(path, missing_ok=missing_ok)
  if not isinstance(data, dict):
    raise ValueError(
        f"{os.fspath(path)} holds a JSON {type(data).__name__} ({json.dumps(data)[:60]}), not "
        "the JSON object ({\"key\": value, ...}) this file must hold; restore the file (the "
        "program that saved the checkpoint writes it) or save the checkpoint again."
    )
  return data


class _SafetensorsFile:
  """One ``.safetensors`` file: header parsed once, tensors read on demand."""

  def __init__(self, path: str):
    self.path = path
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        raise self._damaged(f"it is {size} bytes long, shorter than the 8-byte header size")
      (n,) = struct.unpack("<Q", head)
      if n > size - 8:
        raise self._damaged(f"its header claims {n} bytes but the file has {size - 8} after it")
      try:
        header = json.loads(f.read(n))
      except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise self._damaged(f"its JSON header does not parse ({e})") from None
    self.data_start = 8 + n
    header.pop("__metadata__", None)
    if not isinstance(header, dict) or not all(
        isinstance(v, dict) and {"dtype", "shape", "data_offsets"} <= set(v)
        for v in header.values()
    ):
      raise self._damaged("its header is not a table of tensors (dtype, shape, data_offsets)")
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    if self.data_start + end > size:
      raise self._damaged(
          f"it is truncated: the tensors end at byte {self.data_start + end}, the file at {size}"
      )
    self.header = header
    self._handle = None

  def _damaged(self, why: str) -> ValueError:
    return ValueError(
        f"{self.path} is not a valid safetensors file: {why}. Download or export it again."
    )

  def keys(self):
    return self.header.keys()

  def shape(self, key: str) -> tuple[int, ...]:
    return tuple(self.header[key]["shape"])

  def dtype(self, key: str) -> np.dtype:
    tag = self.header[key]["dtype"]
    if tag not in _ST_DTYPES:
      raise ValueError(f"{self.path}: tensor {key!r} has unsupported dtype {tag}.")
    return _ST_DTYPES[tag]

  def read_slice(self, key: str, index: tuple[slice, ...]) -> np.ndarray:
    """``tensor[index]`` read from the file without reading the rest of the tensor."""
    if self._handle is None:
      from safetensors import safe_open

      self._handle = safe_open(self.path, framework="numpy")
    out = self._handle.get_slice(key)[index]
    return np.asarray(out).view(self.dtype(key)).reshape(out.shape)

  def get(self, key: str) -> np.ndarray:
    info = self.header[key]
    if info["dtype"] in _NUMPY_NATIVE:
      if self._handle is None:
        from safetensors import safe_open

        self._handle = safe_open(self.path, framework="numpy")
      try:
        return self._handle.get_tensor(key)
      except Exception as e:  # noqa: BLE001 - safetensors' own error types are not public
        raise self._damaged(f"tensor {key!r} cannot be read ({e})") from None
    if info["dtype"] not in _ST_DTYPES:
      raise ValueError(f"{self.path}: tensor {key!r} has unsupported dtype {info['dtype']}.")
    begin, end = info["data_offsets"]
    raw = np.fromfile(
        self.path, dtype=np.uint8, count=end - begin, offset=self.data_start + begin
    )
    return raw.view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"])


def _torch_to_numpy(t) -> np.ndarray:
  import torch

  t = t.detach().cpu()
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


class TensorStore:
  """The tensors of a Hugging Face folder (one file or an index of shards), by name."""

  def __init__(self, folder: str):
    self.folder = folder
    self._files: dict[str, Any] = {}  # tensor name -> _SafetensorsFile or loaded dict
    st, st_index = os.path.join(folder, SAFETENSORS), os.path.join(folder, SAFETENSORS_INDEX)
    pt, pt_index = os.path.join(folder, PT_BIN), os.path.join(folder, PT_BIN_INDEX)
    if os.path.exists(st):
      self._add_safetensors([st])
    elif os.path.exists(st_index):
      self._add_safetensors(self._shards(st_index))
    elif os.path.exists(pt) or os.path.exists(pt_index):
      self._add_torch([pt] if os.path.exists(pt) else self._shards(pt_index))
    else:
      raise FileNotFoundError(
          f"{folder} holds no weights: expected {SAFETENSORS}, {SAFETENSORS_INDEX}, {PT_BIN} or "
          f"{PT_BIN_INDEX}."
      )

  def _shards(self, index_path: str) -> list[str]:
    weight_map = read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
      raise ValueError(f"{index_path} has no weight_map (tensor name -> shard file).")
    files = sorted(set(weight_map.values()))
    for name in files:
      if not os.path.exists(os.path.join(self.folder, name)):
        held = sorted(k for k, v in weight_map.items() if v == name)
        raise ValueError(
            f"{index_path} lists shard {name} (holding {len(held)} tensors, e.g. {held[0]!r}) "
            f"but {os.path.join(self.folder, name)} does not exist; download the missing shard "
            "(all files of the checkpoint) or fix weight_map."
        )
    return [os.path.join(self.folder, name) for name in files]

  def _add_safetensors(self, paths):
    for p in paths:
      f = _SafetensorsFile(p)
      for k in f.keys():
        self._files[k] = f

  def _add_torch(self, paths):
    try:
      import torch
    except ImportError as e:
      raise ImportError(
          f"{self.folder} only has PyTorch .bin weights, which need torch to read; install torch "
          "or convert the folder to model.safetensors."
      ) from e
    for p in paths:
      state = torch.load(p, map_location="cpu", weights_only=True)
      arrays = {k: _torch_to_numpy(v) for k, v in state.items()}
      for k in arrays:
        self._files[k] = arrays

  def keys(self) -> list[str]:
    return list(self._files)

  def __contains__(self, key: str) -> bool:
    return key in self._files

  def shape(self, key: str) -> tuple[int, ...]:
    src = self._files[key]
    return src.shape(key) if isinstance(src, _SafetensorsFile) else tuple(src[key].shape)

  def get(self, key: str) -> np.ndarray:
    src = self._files[key]
    return src.get(key) if isinstance(src, _SafetensorsFile) else src[key]

  def can_slice(self, key: str) -> bool:
    """The tensor can be read piecewise (:meth:`read_slice`): safetensors, not ``.bin``."""
    return isinstance(self._files[key], _SafetensorsFile)

  def dtype(self, key: str) -> np.dtype:
    src = self._files[key]
    return src.dtype(key) if isinstance(src, _SafetensorsFile) else src[key].dtype

  def read_slice(self, key: str, index: tuple[slice, ...]) -> np.ndarray:
    """``tensor[index]``; from a safetensors file only the requested bytes are read."""
    src = self._files[key]
    return src.read_slice(key, index) if isinstance(src, _SafetensorsFile) else src[key][index]


def save_safetensors(tensors: dict[str, np.ndarray], path: str, metadata: dict | None = None):
  """Write ``tensors`` to one safetensors file (any dtype in the table above, bfloat16 too)."""
  metadata = dict(metadata or {"format": "pt"})  # "pt": transformers checks for it
  tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
  if all(_ST_TAGS.get(v.dtype) in _NUMPY_NATIVE for v in tensors.values()):
    from safetensors.numpy import save_file

    save_file(tensors, path, metadata=metadata)
    return
  # numpy has no bfloat16, so safetensors.numpy cannot write it: write the documented layout
  # (u64 header size, JSON header, raw little-endian data) ourselves.
  header: dict[str, Any] = {"__metadata__": metadata}
  offset, blobs = 0, []
  for name in sorted(tensors):
    arr = tensors[name]
    if arr.dtype not in _ST_TAGS:
      raise ValueError(f"cannot write tensor {name!r} of dtype {arr.dtype} to safetensors.")
    data = arr.tobytes()
    header[name] = {
        "dtype": _ST_TAGS[arr.dtype],
        "shape": list(arr.shape),
        "data_offsets": [offset, offset + len(data)],
    }
    blobs.append(data)
    offset += len(data)
  head = json.dumps(header, separators=(",", ":")).encode()
  head += b" " * (-len(head) % 8)  # the format aligns the data section to 8 bytes
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(head)))
    f.write(head)
    for data in blobs:
      f.write(data)
