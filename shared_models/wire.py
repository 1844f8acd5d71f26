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
On the wire the buffers of a pack, its index included, travel together as ONE Flower ``Array`` (``pack/bundle``,
``.npy`` bytes of a uint8 array, shared_models/npy.py): every Flower object is a request at every hop of a deployed
link (ServerApp -> SuperLink -> SuperNode -> ClientApp and back), and one Array is two objects (itself and its 5 MiB
chunks) where a buffer each was two per buffer. A bundle is

* 8 bytes: the length H of its header, little-endian unsigned;
* H bytes of UTF-8 JSON ``{"format": "fedchest-bundle", "version": 1, "buffers": [[name, dtype, offset,
  count], ...]}``, ``offset`` in bytes from the start of the data (the first multiple of 64 at or after 8 + H);
* the data: each buffer's bytes at its offset (a multiple of 64), in header order, without overlap.

``unbundle`` returns the buffers as zero-copy views on the bundle (a ``WireError`` for anything else); ``unpack``
then reads them as above. No flwr here: server/records.py and client/records.py build the ArrayRecord from
``wire_arrays`` and read one with ``read_arrays``.
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
BUNDLE = PREFIX + "bundle"  # the one Flower Array a pack travels as
BUNDLE_FORMAT, BUNDLE_VERSION = "fedchest-bundle", 1
ALIGN = 64  # bytes: where each buffer of a bundle starts (zero-copy views of any dtype are aligned)


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


def _plan(state: Mapping[str, Any], groups: Mapping[str, list[str]] | None
          ) -> tuple[dict[str, np.ndarray], list[list], dict[str, int]]:
    """(the state as NumPy arrays, the index entries, elements per buffer name in first-use order)."""
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
    return arrays, entries, sizes


def _fill(buf: np.ndarray, name: str, arrays: dict[str, np.ndarray], entries: list[list],
          state: MutableMapping[str, Any] | Mapping[str, Any], consume: bool) -> None:
    for k, where, offset, _, _ in entries:
        if where == name:
            v = arrays.pop(k)
            buf[offset:offset + v.size] = v.reshape(-1)
            if consume:
                del state[k]


def _index_bytes(entries: list[list]) -> np.ndarray:
    index = {"format": FORMAT, "version": VERSION, "entries": entries}
    return np.frombuffer(json.dumps(index, separators=(",", ":")).encode(), np.uint8)


def iter_pack(state: MutableMapping[str, Any] | Mapping[str, Any], groups: Mapping[str, list[str]] | None = None,
              consume: bool = False) -> Iterator[tuple[str, np.ndarray]]:
    """The pack of ``state`` one buffer at a time, the index last. With ``consume``, each tensor is deleted from
    ``state`` once copied into its buffer, so a sender never holds the state and the whole pack at once."""
    arrays, entries, sizes = _plan(state, groups)
    for name, size in sizes.items():
        buf = np.empty(size, np.dtype(name.rsplit("/", 1)[1]))
        _fill(buf, name, arrays, entries, state, consume)
        yield name, buf
    yield INDEX, _index_bytes(entries)


def pack(state: Mapping[str, Any], groups: Mapping[str, list[str]] | None = None) -> dict[str, np.ndarray]:
    """``state`` (NumPy arrays or torch tensors) as buffers per (group, dtype) plus the index; see the module."""
    return dict(iter_pack(state, groups))


def _uint8(data: Any, where: str) -> np.ndarray:
    raw = np.asarray(data)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise WireError(f"{where}: expected a 1-D uint8 array, got {raw.dtype} of shape {raw.shape}")
    return raw


def _json_list(raw: np.ndarray, where: str, fmt: str, version: int, key: str, what: str = "") -> list:
    """The list under ``key`` of the JSON object in ``raw`` (UTF-8), checked to be ``fmt`` at ``version``: the
    header shape the pack's index and the bundle share. ``what`` names the JSON in the decoding error."""
    try:
        obj = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError(f"{where}: {what}not valid UTF-8 JSON ({exc})") from None
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise WireError(f"{where}: expected a JSON object with format {fmt!r}")
    if obj.get("version") != version:
        raise WireError(f"{where}: format version {obj.get('version')!r}; this side reads version {version}")
    if not isinstance(obj.get(key), list):
        raise WireError(f"{where}: '{key}' must be a list")
    return obj[key]


def _index(buffers: Mapping[str, np.ndarray]) -> list:
    if INDEX not in buffers:
        raise WireError(f"no {INDEX} array (got {sorted(buffers)[:3]}): not a fedchest pack")
    return _json_list(_uint8(buffers[INDEX], INDEX), INDEX, FORMAT, VERSION, "entries")


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


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _bundle_frame(items: list[tuple[str, np.dtype, int]]) -> tuple[np.ndarray, list[tuple[str, np.dtype, int, int]]]:
    """An empty bundle for buffers (name, dtype, elements) with its header written, and where each buffer goes:
    (name, dtype, start byte, elements)."""
    layout, offset = [], 0
    for name, dt, count in items:
        layout.append([name, dt.name, offset, int(count)])
        offset = _aligned(offset + count * dt.itemsize)
    header = json.dumps({"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "buffers": layout},
                        separators=(",", ":")).encode()
    start = _aligned(8 + len(header))
    out = np.zeros(start + offset, np.uint8)
    out[:8] = np.frombuffer(len(header).to_bytes(8, "little"), np.uint8)
    out[8:8 + len(header)] = np.frombuffer(header, np.uint8)
    return out, [(name, dt, start + at, count) for (name, dt, count), (_, _, at, _) in zip(items, layout)]


def bundle(buffers: Mapping[str, np.ndarray]) -> np.ndarray:
    """Any named 1-D buffers as one bundle (``pack_bundle`` writes a pack's without making the buffers first)."""
    out, places = _bundle_frame([(name, b.dtype, b.size) for name, b in buffers.items()])
    for name, dt, at, count in places:
        out[at:at + count * dt.itemsize].view(dt)[:] = np.asarray(buffers[name]).reshape(-1)
    return out


def pack_bundle(state: MutableMapping[str, Any] | Mapping[str, Any], groups: Mapping[str, list[str]] | None = None,
                consume: bool = False) -> np.ndarray:
    """The pack of ``state`` as one uint8 bundle (see the module), each tensor copied straight into its place; with
    ``consume`` each leaves ``state`` once copied, so a sender never holds the state and the bundle at once."""
    arrays, entries, sizes = _plan(state, groups)
    index = _index_bytes(entries)
    items = [(name, np.dtype(name.rsplit("/", 1)[1]), count) for name, count in sizes.items()]
    out, places = _bundle_frame([*items, (INDEX, np.dtype(np.uint8), index.size)])
    for name, dt, at, count in places:
        view = out[at:at + count * dt.itemsize].view(dt)
        if name == INDEX:
            view[:] = index
        else:
            _fill(view, name, arrays, entries, state, consume)
    return out


def unbundle(data: np.ndarray) -> dict[str, np.ndarray]:
    """The buffers of a bundle as zero-copy views on it; ``WireError`` saying what is wrong otherwise."""
    raw = _uint8(data, BUNDLE)
    if raw.size < 8:
        raise WireError(f"{BUNDLE}: {raw.size} bytes, shorter than its 8-byte header length")
    length = int.from_bytes(raw[:8].tobytes(), "little")
    if 8 + length > raw.size:
        raise WireError(f"{BUNDLE}: header of {length} bytes does not fit in {raw.size} bytes")
    buffers = _json_list(raw[8:8 + length], BUNDLE, BUNDLE_FORMAT, BUNDLE_VERSION, "buffers", what="header is ")
    start, end, out = _aligned(8 + length), 0, {}
    for i, e in enumerate(buffers):
        if (not isinstance(e, list) or len(e) != 4 or not isinstance(e[0], str) or not isinstance(e[1], str)
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in e[2:])):
            raise WireError(f"{BUNDLE} buffer {i}: expected [name, dtype, offset >= 0, count >= 0], got {str(e)[:120]}")
        name, dtype, offset, count = e
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise WireError(f"{BUNDLE} buffer {name}: unknown dtype {dtype!r}") from None
        if dt.kind not in "biufc":
            raise WireError(f"{BUNDLE} buffer {name}: dtype {dtype} is not numeric")
        if name in out:
            raise WireError(f"{BUNDLE}: buffer {name} appears twice")
        if offset % ALIGN or offset < end:
            raise WireError(f"{BUNDLE} buffer {name}: offset {offset}, expected a multiple of {ALIGN} at or after "
                            f"{end} (buffers follow each other)")
        if start + offset + count * dt.itemsize > raw.size:
            raise WireError(f"{BUNDLE} buffer {name}: bytes [{start + offset}, {start + offset + count * dt.itemsize})"
                            f" are outside the bundle ({raw.size} bytes)")
        out[name] = np.frombuffer(raw, dt, count, start + offset) if count else np.zeros(0, dt)
        end = offset + count * dt.itemsize
    return out


def wire_arrays(state: Mapping[str, Any], groups: Mapping[str, list[str]] | None, consume: bool
                ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, Flower ``Array`` fields) of the one Array a pack travels as: a side makes ``Array(**fields)``."""
    yield BUNDLE, npy_fields(pack_bundle(state, groups, consume))


def read_arrays(record: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The state in a record holding a bundled pack (any mapping of Array-like objects) as views on its bytes
    (read-only: copy before writing); ``WireError`` when the record or the pack is malformed."""
    if BUNDLE not in record:
        raise WireError(f"no {BUNDLE} array (got {sorted(record)[:3]}): not a fedchest pack")
    if len(record) != 1:
        raise WireError(f"a pack travels as the one array {BUNDLE}; the record also holds "
                        f"{sorted(k for k in record if k != BUNDLE)[:3]}")
    try:
        data = npy_view(record[BUNDLE])
    except (TypeError, ValueError, EOFError) as exc:  # another serialisation, or bytes that are not .npy
        raise WireError(f"{BUNDLE}: not a NumPy array ({str(exc)[:200]})") from None
    return unpack(unbundle(data))
