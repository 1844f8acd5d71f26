"""Flower ``Array`` bytes (``stype`` ``numpy.ndarray``: a ``.npy`` file) written and read without extra copies.
No flwr import: each side builds ``Array(**npy_fields(value))`` and reads any Array-like object (``.data``,
``.dtype``, ``.shape``, ``.stype``, ``.numpy()``) with ``npy_view``."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np

NUMPY_STYPE = "numpy.ndarray"


def npy_fields(value: np.ndarray) -> dict[str, Any]:
    """The fields of a Flower ``Array`` holding ``value``: the bytes ``Array.from_numpy_ndarray`` would write
    (``.npy``), made with one copy of the values instead of two."""
    value = np.require(value, requirements="C")  # 0-d stays 0-d
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(value))
    data = b"".join([header.getvalue(), memoryview(value.reshape(-1)).cast("B")])
    return {"dtype": str(value.dtype), "shape": tuple(value.shape), "stype": NUMPY_STYPE, "data": data}


def npy_view(a: Any) -> np.ndarray:
    """A read-only NumPy view on a Flower ``Array``'s ``.npy`` bytes, without the copy ``Array.numpy()`` makes
    (the server looks at every update several times; with views it holds each update once). The header is not
    parsed: the dtype and shape are the Array's own, and the view is used only when the header says C order and the
    byte count matches them exactly; anything else goes through ``a.numpy()``."""
    data = a.data
    if a.stype != NUMPY_STYPE or data[:6] != b"\x93NUMPY":
        return a.numpy()
    if data[6] == 1:
        offset = 10 + int.from_bytes(data[8:10], "little")
    elif data[6] in (2, 3):
        offset = 12 + int.from_bytes(data[8:12], "little")
    else:
        return a.numpy()
    try:
        dtype = np.dtype(a.dtype)
    except TypeError:
        return a.numpy()
    shape = tuple(int(d) for d in a.shape)
    count = math.prod(shape)
    if (dtype.hasobject or b"'fortran_order': False" not in data[10:offset]
            or len(data) - offset != count * dtype.itemsize):
        return a.numpy()
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
