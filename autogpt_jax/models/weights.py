"""Checkpoint weight files (safetensors, PyTorch .bin, Flax msgpack; sharded or not) read into a
flat ``{PyTorch-style HF key: numpy array}``."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import ml_dtypes
import numpy as np

from autogpt_jax.errors import ModelLoadError

# --------------------------------------------------------------------------------------------
# reading weight files into flat {HF key: numpy array}
# --------------------------------------------------------------------------------------------

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Memory-mapped safetensors reader (handles bfloat16, which safetensors' numpy backend does not)."""
    try:
        buf = np.memmap(path, dtype=np.uint8, mode="r")
        (n,) = struct.unpack("<Q", bytes(buf[:8]))
        header = json.loads(bytes(buf[8:8 + n]))
    except Exception as e:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({e})") from None
    out = {}
    base = 8 + n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dt = _ST_DTYPES.get(info["dtype"])
        if dt is None:
            raise ModelLoadError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        if base + end > buf.shape[0]:
            raise ModelLoadError(f"{path}: tensor {key!r} runs past the end of the file (truncated download?)")
        out[key] = buf[base + start:base + end].view(dt).reshape(info["shape"])
    return out


_TORCH_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                 "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
                 "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    """Read a PyTorch zip checkpoint without torch and without executing pickled code: only
    tensor-rebuild calls and storage references are allowed through."""

    def rebuild(storage, offset, size, stride, *_):
        item = storage.dtype.itemsize
        if not size:
            return storage[offset:offset + 1].reshape(()).copy()
        return np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                               strides=tuple(s * item for s in stride)).copy()

    class _Storage:
        def __init__(self, name):
            self.dtype = _TORCH_DTYPES[name]

    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ModelLoadError(f"{path}: not a zip-format PyTorch checkpoint (legacy or corrupt file); "
                             "re-save it with torch>=1.6 or convert it to safetensors") from None
    names = zf.namelist()
    pkl = next((n for n in names if n.endswith("data.pkl")), None)
    if pkl is None:
        raise ModelLoadError(f"{path}: no data.pkl inside the checkpoint")
    prefix = pkl[: -len("data.pkl")]

    class _Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "torch._utils" and name == "_rebuild_tensor_v2":
                return rebuild
            if module == "torch" and name in _TORCH_DTYPES:
                return name
            if module == "collections" and name == "OrderedDict":
                return OrderedDict
            raise ModelLoadError(f"{path}: refusing to unpickle {module}.{name} (only tensors are allowed)")

        def persistent_load(self, pid):
            _, storage_type, key, _location, _numel = pid
            if isinstance(storage_type, str):
                dtype = _TORCH_DTYPES[storage_type]
            else:  # torch>=2 untyped storages: dtype comes from the tensor; not produced by state_dict saves
                raise ModelLoadError(f"{path}: unsupported storage record {pid!r}")
            return np.frombuffer(zf.read(f"{prefix}data/{key}"), dtype=dtype)

    with zf.open(pkl) as f:
        obj = _Unpickler(f).load()
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    return {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}


def _read_flax_msgpack(path: Path) -> dict[str, np.ndarray]:
    """HF Flax checkpoints: nested dicts with ``kernel`` (in, out), ``embedding`` and ``scale`` leaves;
    renamed to PyTorch-style keys so one rule table serves every format."""
    from flax.serialization import msgpack_restore

    try:
        tree = msgpack_restore(path.read_bytes())
    except Exception as e:
        raise ModelLoadError(f"{path}: not a readable Flax msgpack file ({e})") from None
    out = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, prefix + [k])
                continue
            arr = np.asarray(v)
            if k == "kernel":
                k, arr = "weight", arr.T if arr.ndim == 2 else arr
            elif k in ("embedding", "scale"):
                k = "weight"
            out[".".join(prefix + [k])] = arr

    walk(tree, [])
    return out


def read_weights(model_dir: Path) -> tuple[dict[str, np.ndarray], Path]:
    """All tensors of a checkpoint directory, keyed as in PyTorch, and the file they came from."""
    d = Path(model_dir)
    for index_name, reader in (("model.safetensors.index.json", _read_safetensors),
                               ("pytorch_model.bin.index.json", _read_torch_bin)):
        if (d / index_name).exists():
            shards = sorted(set(json.loads((d / index_name).read_text())["weight_map"].values()))
            out = {}
            for s in shards:
                if not (d / s).exists():
                    raise ModelLoadError(f"{d / index_name} names shard {s!r}, which is missing")
                out.update(reader(d / s))
            return out, d / index_name
    for name, reader in (("model.safetensors", _read_safetensors), ("pytorch_model.bin", _read_torch_bin),
                         ("flax_model.msgpack", _read_flax_msgpack)):
        if (d / name).exists():
            return reader(d / name), d / name
    raise ModelLoadError(
        f"{d}: no weights found. Expected one of model.safetensors, pytorch_model.bin, flax_model.msgpack "
        "(or a sharded *.index.json). Is this the right directory?")
