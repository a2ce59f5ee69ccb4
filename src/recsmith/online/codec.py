"""Records in the online store: named numpy arrays (and JSON scalars) in one byte string,
decoded without copies or pickle (a store's bytes are never executed).

Layout: 4-byte little-endian header length, a JSON header {"arrays": {name: [dtype,
shape, offset]}, "values": {...}}, then the arrays' bytes."""

from __future__ import annotations

import json
import math
import struct

import numpy as np

from recsmith.errors import DataError

_ALLOWED = {"<i8", "<i4", "|i1", "<f8", "<f4", "|u1", "|b1"}


def pack(arrays: dict[str, np.ndarray], **values) -> bytes:
    header, chunks, offset = {}, [], 0
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        if array.dtype.str not in _ALLOWED:
            raise DataError(f"online record: array '{name}' has dtype {array.dtype}, not a plain number type")
        header[name] = [array.dtype.str, list(array.shape), offset]
        chunks.append(array.tobytes())
        offset += array.nbytes
    head = json.dumps({"arrays": header, "values": values}, separators=(",", ":")).encode()
    return struct.pack("<I", len(head)) + head + b"".join(chunks)


def unpack(data: bytes) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, values); arrays are read-only views of `data`."""
    try:
        (size,) = struct.unpack_from("<I", data)
        head = json.loads(data[4:4 + size])
        body, arrays = memoryview(data)[4 + size:], {}
        for name, (dtype, shape, offset) in head["arrays"].items():
            if dtype not in _ALLOWED:
                raise ValueError(f"dtype {dtype}")
            count = math.prod(shape)  # 1 for a scalar's []
            arrays[name] = np.frombuffer(body, dtype, count, offset).reshape(shape)
        return arrays, head["values"]
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"online record: not a recsmith record ({exc})") from None
