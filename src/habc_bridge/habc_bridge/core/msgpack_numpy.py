"""openpi's msgpack-numpy wire format: msgpack with numpy arrays as tagged maps, never pickle.

An ``np.ndarray`` travels as the map ``{b"__ndarray__": True, b"data": <raw bytes>,
b"dtype": <dtype.str, e.g. "<f4">, b"shape": <list>}`` and a numpy scalar as ``{b"__npgeneric__":
True, b"data": <item>, b"dtype": <dtype.str>}``: byte-for-byte what ``openpi_client.msgpack_numpy``
writes and reads, so openpi's servers and clients and ours interoperate. Everything else is
plain msgpack (str keys, str/int/float/bool/None/list/dict values).

Unlike ``msgpack-numpy``, object, void and complex dtypes are refused on both sides (no pickle
fallback, nothing executable): a peer can send data, never code. Decoding checks that the byte
count matches dtype × shape and returns writable arrays.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

#: dtype kinds that never travel: object (pickle), void (structured) and complex.
REFUSED_KINDS = ("O", "V", "c")


class WireFormatError(ValueError):
    """A payload that is not valid msgpack-numpy (or carries a refused dtype)."""


def pack_array(obj: Any) -> Any:
    """msgpack ``default`` hook: numpy arrays and scalars to their tagged maps."""
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in REFUSED_KINDS:
        raise WireFormatError(f"unsupported dtype {obj.dtype} (object/void/complex never travel)")
    if isinstance(obj, np.ndarray):
        return {
            b"__ndarray__": True,
            b"data": np.ascontiguousarray(obj).tobytes(),
            b"dtype": obj.dtype.str,
            b"shape": list(obj.shape),
        }
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot serialize {type(obj).__name__} as msgpack-numpy")


def _dtype(text: Any) -> np.dtype:
    if not isinstance(text, str):
        raise WireFormatError(f"dtype must be a string, got {type(text).__name__}")
    try:
        dtype = np.dtype(text)
    except TypeError as exc:
        raise WireFormatError(f"unknown dtype {text!r}") from exc
    if dtype.kind in REFUSED_KINDS:
        raise WireFormatError(f"refused dtype {text!r} (object/void/complex never travel)")
    return dtype


def unpack_array(obj: dict) -> Any:
    """msgpack ``object_hook``: tagged maps back to numpy arrays and scalars."""
    if b"__ndarray__" in obj:
        dtype = _dtype(obj.get(b"dtype"))
        shape = obj.get(b"shape")
        data = obj.get(b"data")
        if not isinstance(data, bytes) or not isinstance(shape, (list, tuple)):
            raise WireFormatError("an __ndarray__ map needs bytes 'data' and a list 'shape'")
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise WireFormatError(f"negative dimension in shape {shape}")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if len(data) != expected:
            raise WireFormatError(
                f"array of {dtype.str} {shape} needs {expected} bytes, got {len(data)}"
            )
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    if b"__npgeneric__" in obj:
        return _dtype(obj.get(b"dtype")).type(obj.get(b"data"))
    return obj


def packb(obj: Any) -> bytes:
    """Serialize ``obj`` (dicts, lists, scalars, numpy arrays) to msgpack-numpy bytes."""
    return msgpack.packb(obj, default=pack_array, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """Deserialize msgpack-numpy bytes; raises :class:`WireFormatError` on anything invalid."""
    try:
        return msgpack.unpackb(data, object_hook=unpack_array, raw=False)
    except WireFormatError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise WireFormatError(f"not msgpack-numpy: {type(exc).__name__}: {exc}") from exc
