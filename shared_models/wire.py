"""The packed wire format: how a model state (the global model, a site's update) crosses the wire as a few large
arrays instead of one Flower ``Array`` per tensor (each Array, and each 5 MiB chunk of one, is a separate object and
request through the SuperLink).

A pack is a mapping of names to 1-D C-contiguous NumPy arrays:

* ``pack/<group>/<dtype>``: one buffer per (parameter group, dtype), the group's tensors of that dtype flattened
  and concatenated in the state's key order. Keys no group names go to the group ``rest``.
* ``pack/index``: a uint8 array holding UTF-8 JSON ``{"format": "fedchest-pack", "version": 1, "entries":
  [[key, buffer, offset, shape, dtype], ...]}``, one entry per tensor in the state's key order; ``offset`` and
  the size (product of ``shape``) count elements of the buffer. A buffer's entries tile it exactly, in index order.

``unpack`` returns zero-copy views (slices of the buffers, reshaped) and refuses anything else with a
``WireError`` saying what is wrong, so a receiver can reject a malformed pack as it rejects any bad update.
No flwr here: each buffer travels as one Flower ``Array`` (``.npy`` bytes, shared_models/npy.py);
server/records.py and client/records.py build the ArrayRecord from ``wire_arrays`` and read one with
``read_arrays``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

import numpy as np

from shared_models.npy import npy_fields, npy_view

FORMAT = "fedchest-pack"
VERSION = 1
PREFIX = "pack/"
INDEX = PREFIX + "index"
REST = "rest"


class WireError(ValueError):
    """A pack that cannot be read: the message names what is missing or inconsistent."""


def buffer_name(group: str, dtype: np.dtype) -> str:
    return f"{PREFIX}{group}/{dtype.name}"


def _numpy(key: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        try:
            value = value.detach().cpu().numpy()
        except TypeError as exc:
            raise WireError(f"{key}: torch dtype {value.dtype} has no NumPy equivalent ({exc})") from None
    value = np.asarray(value)
    if value.dtype.kind not in "biufc":
        raise WireError(f"{key}: dtype {value.dtype} cannot be packed (numeric and bool only)")
    return value


def iter_pack(state: MutableMapping[str, Any] | Mapping[str, Any], groups: Mapping[str, list[str]] | None = None,
              consume: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    """The pack of ``state`` one buffer at a time, the index last. With ``consume``, each tensor is deleted from
    ``state`` once copied into its buffer, so a sender never holds the state and the whole pack at once."""
    owner: dict[str, str] = {}
    for group, keys in (groups or {}).items():
        for k in keys:
            if owner.setdefault(k, group) != group:
                raise WireError(f"{k} is in two groups ({owner[k]}, {group})")
    arrays = {k: _numpy(k, v) for k, v in state.items()}
    entries, sizes = [], {}
    for k, v in arrays.items():
        name = buffer_name(owner.get(k, REST), np.dtype(v.dtype.name))
        entries.append([k, name, sizes.get(name, 0), list(v.shape), v.dtype.name])
        sizes[name] = sizes.get(name, 0) + v.size
    for name, size in sizes.items():
        buf = np.empty(size, np.dtype(name.rsplit("/", 1)[1]))
        for k, where, offset, _, _ in entries:
            if where == name:
                v = arrays.pop(k)
                buf[offset:offset + v.size] = v.reshape(-1)
                if consume:
                    del state[k]
        yield name, buf
    index = {"format": FORMAT, "version": VERSION, "entries": entries}
    yield INDEX, np.frombuffer(json.dumps(index, separators=(",", ":")).encode(), np.uint8)


def pack(state: Mapping[str, Any], groups: Mapping[str, list[str]] | None = None) -> dict[str, np.ndarray]:
    """``state`` (NumPy arrays or torch tensors) as buffers per (group, dtype) plus the index; see the module."""
    return dict(iter_pack(state, groups))


def _index(buffers: Mapping[str, np.ndarray]) -> list:
    if INDEX not in buffers:
        raise WireError(f"no {INDEX} array (got {sorted(buffers)[:3]}): not a fedchest pack")
    raw = np.asarray(buffers[INDEX])
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise WireError(f"{INDEX}: expected a 1-D uint8 array, got {raw.dtype} of shape {raw.shape}")
    try:
        index = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"{INDEX}: not valid UTF-8 JSON ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise WireError(f"{INDEX}: expected a JSON object with format {FORMAT!r}")
    if index.get("version") != VERSION:
        raise WireError(f"{INDEX}: format version {index.get('version')!r}; this side reads version {VERSION}")
    if not isinstance(index.get("entries"), list):
        raise WireError(f"{INDEX}: 'entries' must be a list")
    return index["entries"]


def _entry(i: int, e: Any) -> tuple[str, str, int, tuple[int, ...], str]:
    def whole(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool) and x >= 0

    if (not isinstance(e, list) or len(e) != 5 or not isinstance(e[0], str) or not isinstance(e[1], str)
            or not whole(e[2]) or not isinstance(e[3], list) or not all(whole(d) for d in e[3])
            or not isinstance(e[4], str)):
        raise WireError(f"{INDEX} entry {i}: expected [key, buffer, offset >= 0, shape (list of ints >= 0), dtype], "
                        f"got {str(e)[:120]}")
    return e[0], e[1], e[2], tuple(e[3]), e[4]


def unpack(buffers: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The state a pack holds, in its key order, as zero-copy views on the buffers (read-only when they are);
    ``WireError`` when the pack is malformed."""
    out: dict[str, np.ndarray] = {}
    used: dict[str, int] = {}  # buffer -> elements its entries cover so far
    for i, e in enumerate(_index(buffers)):
        key, name, offset, shape, dtype = _entry(i, e)
        if key in out:
            raise WireError(f"{INDEX}: key {key} appears twice")
        if name == INDEX or name not in buffers:
            raise WireError(f"{key}: its buffer {name} is not in the pack")
        buf = np.asarray(buffers[name])
        if buf.ndim != 1:
            raise WireError(f"{name}: expected a 1-D buffer, got shape {buf.shape}")
        if buf.dtype.name != dtype:
            raise WireError(f"{key}: dtype {dtype} but its buffer {name} holds {buf.dtype.name}")
        if offset != used.get(name, 0):
            raise WireError(f"{key}: offset {offset} in {name}, expected {used.get(name, 0)} (entries tile their "
                            "buffer in index order)")
        size = math.prod(shape)
        if offset + size > buf.size:
            raise WireError(f"{key}: slice [{offset}, {offset + size}) is outside {name} ({buf.size} elements)")
        out[key] = buf[offset:offset + size].reshape(shape)
        used[name] = offset + size
    for name, buf in buffers.items():
        if name == INDEX:
            continue
        if name not in used:
            raise WireError(f"buffer {name} is not in the index")
        if used[name] != buf.size:
            raise WireError(f"{name}: {buf.size} elements but the index covers {used[name]}")
    return out


def wire_arrays(state: Mapping[str, Any], groups: Mapping[str, list[str]] | None, consume: bool
                ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, Flower ``Array`` fields) of each buffer of the pack, one at a time: a side makes ``Array(**fields)``."""
    for name, buf in iter_pack(state, groups, consume):
        yield name, npy_fields(buf)


def read_arrays(record: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The state in a record of packed Flower Arrays (any mapping of Array-like objects) as views on their bytes
    (read-only: copy before writing); ``WireError`` when the pack is malformed."""
    buffers = {}
    for name, a in record.items():
        try:
            buffers[name] = npy_view(a)
        except (TypeError, ValueError, EOFError) as exc:  # another serialisation, or bytes that are not .npy
            raise WireError(f"{name}: not a NumPy array ({str(exc)[:200]})") from None
    return unpack(buffers)
