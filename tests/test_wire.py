"""The packed wire format (shared_models/wire.py), its .npy bytes (shared_models/npy.py) and the ArrayRecord
adapters on each side (server/records.py, client/records.py)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from flwr.app import Array

from client import records as client_records
from server import records as server_records
from shared_models.networks import build_model
from shared_models.npy import npy_fields, npy_view
from shared_models.ontology import load_label_set
from shared_models.wire import BUNDLE, INDEX, WireError, bundle, pack, pack_bundle, unbundle, unpack


def _mixed_state() -> dict:
    return {
        "a.w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "a.h": np.array([1.5, -2.0, np.inf], np.float16),
        "a.n": np.array(7, np.int64),  # 0-d
        "b.mask": np.array([[True, False], [False, True]]),
        "b.w": torch.linspace(-1, 1, 5),
        "loose": np.array([3, 4], np.int64),
        "b.empty": np.zeros((0, 3), np.float32),
    }


def test_round_trip_is_exact_in_key_order_and_split_by_group_and_dtype():
    state = _mixed_state()
    groups = {"a": ["a.w", "a.h", "a.n"], "b": ["b.mask", "b.w", "b.empty"]}
    buffers = pack(state, groups)
    assert sorted(buffers) == ["pack/a/float16", "pack/a/float32", "pack/a/int64", "pack/b/bool", "pack/b/float32",
                               INDEX, "pack/rest/int64"]  # the key no group names goes to "rest"
    assert all(b.ndim == 1 and b.flags.c_contiguous for b in buffers.values())
    assert buffers["pack/b/float32"].size == 5 and buffers["pack/a/float32"].size == 12
    out = unpack(buffers)
    assert list(out) == list(state)
    for k, v in state.items():
        want = v.numpy() if isinstance(v, torch.Tensor) else v
        assert out[k].dtype == want.dtype and out[k].shape == want.shape, k
        np.testing.assert_array_equal(out[k], want)
    assert list(unpack(pack(state))) == list(state)  # no groups: one buffer per dtype under "rest"
    assert set(pack(state)) == {INDEX, "pack/rest/float32", "pack/rest/float16", "pack/rest/int64", "pack/rest/bool"}
    assert unpack(pack({})) == {}
    index = json.loads(pack({"k": np.zeros(2)})[INDEX].tobytes())  # the contract both sides read
    assert index == {"format": "fedchest-pack", "version": 1,
                     "entries": [["k", "pack/rest/float64", 0, [2], "float64"]]}


def test_unpacked_tensors_are_views_on_the_buffers():
    buffers = pack(_mixed_state(), {"a": ["a.w", "a.h", "a.n"]})
    out = unpack(buffers)
    for k in ("a.w", "a.h", "a.n", "b.w", "b.mask"):
        name = next(n for n in buffers if n != INDEX and np.shares_memory(out[k], buffers[n]))
        assert name.endswith("/" + out[k].dtype.name)


def test_the_server_reads_a_record_as_views_on_the_message_bytes():
    state = _mixed_state()
    record = server_records.to_record(state)
    out = server_records.from_record(record)
    for k in state:
        assert not out[k].flags.writeable
        base = out[k]
        while isinstance(base, np.ndarray):
            base = base.base
        assert any(base is a.data for a in record.values()), k  # no copy of the received bytes
    np.testing.assert_array_equal(client_records.from_record(record)["a.w"], state["a.w"])
    back = server_records.to_record({k: np.array(v) for k, v in client_records.from_record(record).items()})
    assert [a.data for a in back.values()] == [a.data for a in record.values()]  # the same bytes both ways


def test_consume_releases_each_tensor_once_packed():
    state = {"g.a": np.ones(3, np.float32), "h.b": np.zeros(2, np.int64)}
    record = server_records.to_record(state, consume=True)
    assert state == {} and list(server_records.from_record(record)) == ["g.a", "h.b"]


def _index(buffers: dict) -> dict:
    return json.loads(buffers[INDEX].tobytes())


def _with_index(buffers: dict, index: dict | bytes) -> dict:
    raw = index if isinstance(index, bytes) else json.dumps(index).encode()
    return {**buffers, INDEX: np.frombuffer(raw, np.uint8)}


def _malformed() -> dict[str, tuple[dict, str]]:
    good = pack({"g.a": np.arange(4, dtype=np.float32), "g.b": np.arange(2, dtype=np.float32),
                 "g.n": np.array([1], np.int64)}, {"g": ["g.a", "g.b", "g.n"]})
    idx = _index(good)

    def entries(i: int, field: int, value) -> dict:
        e = [list(x) for x in idx["entries"]]
        e[i][field] = value
        return _with_index(good, {**idx, "entries": e})

    return {
        "missing index": ({k: v for k, v in good.items() if k != INDEX}, "no pack/index array"),
        "bad json": (_with_index(good, b"{not json"), "not valid UTF-8 JSON"),
        "not utf-8": (_with_index(good, b"\xff\xfe"), "not valid UTF-8 JSON"),
        "wrong format": (_with_index(good, {**idx, "format": "other"}), "format 'fedchest-pack'"),
        "unknown version": (_with_index(good, {**idx, "version": 99}), "format version 99"),
        "entry not a list": (entries(0, 2, "0"), "entry 0: expected [key, buffer, offset >= 0"),
        "negative dim": (entries(1, 3, [-2]), "entry 1: expected"),
        "key not a string": (entries(0, 0, 5), "entry 0: expected"),
        "buffer not a string": (entries(0, 1, 5), "entry 0: expected"),
        "shape not a list": (entries(0, 3, 4), "entry 0: expected"),
        "dtype not a string": (entries(0, 4, 4), "entry 0: expected"),
        "short entry": (_with_index(good, {**idx, "entries": [idx["entries"][0][:4]]}), "entry 0: expected"),
        "entries not a list": (_with_index(good, {**idx, "entries": {}}), "'entries' must be a list"),
        "slice outside": (entries(1, 3, [3]), "g.b: slice [4, 7) is outside pack/g/float32 (6 elements)"),
        "offset gap": (entries(1, 2, 5), "g.b: offset 5 in pack/g/float32, expected 4"),
        "dtype mismatch": (entries(2, 4, "float32"), "g.n: dtype float32 but its buffer pack/g/int64 holds int64"),
        "size mismatch": (entries(1, 3, [1]), "pack/g/float32: 6 elements but the index covers 5"),
        "buffer missing": (entries(2, 1, "pack/g/float64"), "g.n: its buffer pack/g/float64 is not in the pack"),
        "buffer not indexed": ({**good, "pack/x/float32": np.zeros(1, np.float32)},
                               "buffer pack/x/float32 is not in the index"),
        "duplicate key": (entries(1, 0, "g.a"), "key g.a appears twice"),
        "index dtype": ({**good, INDEX: good[INDEX].astype(np.int16)}, "expected a 1-D uint8 array"),
        "2-d buffer": ({**good, "pack/g/int64": good["pack/g/int64"].reshape(1, 1)}, "expected a 1-D buffer"),
    }


@pytest.mark.parametrize("case", list(_malformed()))
def test_a_malformed_pack_is_a_wire_error_saying_what_is_wrong(case):
    buffers, message = _malformed()[case]
    with pytest.raises(WireError, match=__import__("re").escape(message)):
        unpack(buffers)
    assert issubclass(WireError, ValueError)


def test_a_record_whose_arrays_are_not_npy_is_a_wire_error():
    record = server_records.to_record({"g.a": np.zeros(2, np.float32)})
    record[BUNDLE] = Array(dtype="uint8", shape=(8,), stype="torch.Tensor", data=b"\0" * 8)
    with pytest.raises(WireError, match="pack/bundle: not a NumPy array"):
        server_records.from_record(record)
    record[BUNDLE] = Array(dtype="uint8", shape=(8,), stype="torch.Tensor",
                           data=npy_fields(np.zeros(8, np.uint8))["data"])  # .npy bytes, another stype
    with pytest.raises(WireError, match="pack/bundle: not a NumPy array"):
        server_records.from_record(record)
    record[BUNDLE] = Array(dtype="uint8", shape=(8,), stype="numpy.ndarray", data=b"garbage")
    with pytest.raises(WireError, match="pack/bundle: not a NumPy array"):
        server_records.from_record(record)
    with pytest.raises(WireError, match="no pack/bundle array"):
        server_records.from_record({"pack/rest/float32": record[BUNDLE]})
    with pytest.raises(WireError, match=r"the record also holds \['x'\]"):
        server_records.from_record({BUNDLE: record[BUNDLE], "x": record[BUNDLE]})


def _bundle_with(header: dict | bytes, tail: bytes = b"") -> np.ndarray:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    start = -(-(8 + len(raw)) // 64) * 64
    return np.frombuffer(len(raw).to_bytes(8, "little") + raw + b"\0" * (start - 8 - len(raw)) + tail, np.uint8)


def _bad_bundles() -> dict[str, tuple[np.ndarray, str]]:
    head = {"format": "fedchest-bundle", "version": 1}

    def one(entry) -> np.ndarray:
        return _bundle_with({**head, "buffers": [entry]}, b"\1" * 64)

    return {
        "2-d": (np.zeros((2, 8), np.uint8), "expected a 1-D uint8 array"),
        "short": (np.zeros(5, np.uint8), "5 bytes, shorter than its 8-byte header length"),
        "header past the end": (np.frombuffer((99).to_bytes(8, "little") + b"{}", np.uint8),
                                "header of 99 bytes does not fit in 10 bytes"),
        "not json": (_bundle_with(b"{nope"), "header is not valid UTF-8 JSON"),
        "format": (_bundle_with({"format": "other"}), "format 'fedchest-bundle'"),
        "version": (_bundle_with({**head, "version": 2}), "format version 2; this side reads version 1"),
        "buffers not a list": (_bundle_with({**head, "buffers": {}}), "'buffers' must be a list"),
        "short entry": (one(["a", "uint8", 0]), "buffer 0: expected [name, dtype, offset >= 0, count >= 0]"),
        "negative count": (one(["a", "uint8", 0, -1]), "buffer 0: expected"),
        "bool offset": (one(["a", "uint8", True, 1]), "buffer 0: expected"),
        "unknown dtype": (one(["a", "float99", 0, 1]), "buffer a: unknown dtype 'float99'"),
        "not numeric": (one(["a", "object", 0, 1]), "buffer a: dtype object is not numeric"),
        "unaligned": (one(["a", "uint8", 8, 1]), "buffer a: offset 8, expected a multiple of 64 at or after 0"),
        "outside": (one(["a", "float64", 0, 9]), "are outside the bundle"),
        "overlap": (_bundle_with({**head, "buffers": [["a", "uint8", 0, 65], ["b", "uint8", 64, 1]]}, b"\1" * 192),
                    "buffer b: offset 64, expected a multiple of 64 at or after 65"),
        "twice": (_bundle_with({**head, "buffers": [["a", "uint8", 0, 1], ["a", "uint8", 64, 1]]}, b"\1" * 128),
                  "buffer a appears twice"),
        "name not a string": (one([5, "uint8", 0, 1]), "buffer 0: expected [name, dtype, offset >= 0, count >= 0]"),
        "dtype not a string": (one(["a", 5, 0, 1]), "buffer 0: expected [name, dtype, offset >= 0, count >= 0]"),
        "overlap in elements of 8 bytes": (
            _bundle_with({**head, "buffers": [["a", "float64", 0, 9], ["b", "uint8", 64, 1]]}, b"\1" * 192),
            "buffer b: offset 64, expected a multiple of 64 at or after 72"),
        "outside past an offset": (  # an 80-byte header: the data starts at byte 128
            _bundle_with({**head, "buffers": [["a", "uint8", 64, 65]]}, b"\1" * 128),
            "buffer a: bytes [192, 257) are outside the bundle (256 bytes)"),
    }


@pytest.mark.parametrize("case", list(_bad_bundles()))
def test_a_malformed_bundle_is_a_wire_error_saying_what_is_wrong(case):
    data, message = _bad_bundles()[case]
    with pytest.raises(WireError, match=__import__("re").escape(message)):
        unbundle(data)


def test_a_bundle_holds_each_buffer_at_an_aligned_offset_as_a_view():
    buffers = pack(_mixed_state(), {"a": ["a.w", "a.h", "a.n"]})
    data = bundle(buffers)
    out = unbundle(data)
    assert list(out) == list(buffers)
    for name, buf in buffers.items():
        assert out[name].dtype == buf.dtype and np.array_equal(out[name], buf), name
        if out[name].size:  # an empty buffer is its own empty array
            assert np.shares_memory(out[name], data), name
            assert (out[name].ctypes.data - data.ctypes.data) % 64 == 0 and out[name].flags.aligned, name
    assert unpack(out).keys() == unpack(buffers).keys()
    whole = pack_bundle(_mixed_state(), {"a": ["a.w", "a.h", "a.n"]})
    assert np.array_equal(whole, data)  # written in place, the same bytes as bundling the pack


def test_bundle_boundaries_header_and_buffers_may_end_at_the_last_byte():
    """Off-by-one edges of the bundle layout: the writer and the reader agree on where the data starts for every
    header length modulo the 64-byte alignment; a header (no buffers) or a buffer ending at the bundle's last byte
    fits; a zero header length is 8 bytes long enough, with a header that is not JSON."""
    for n in range(1, 70):  # the header grows a byte per name character: every residue mod 64
        name = "x" * n
        assert np.array_equal(unbundle(bundle({name: np.arange(3, dtype=np.int16)}))[name], np.arange(3)), n
    head = json.dumps({"format": "fedchest-bundle", "version": 1, "buffers": []}).encode()
    assert unbundle(np.frombuffer(len(head).to_bytes(8, "little") + head, np.uint8)) == {}  # no padding after it
    full = _bundle_with({"format": "fedchest-bundle", "version": 1, "buffers": [["a", "uint8", 0, 64]]}, b"\2" * 64)
    assert np.array_equal(unbundle(full)["a"], np.full(64, 2, np.uint8))
    with pytest.raises(WireError, match="header is not valid UTF-8 JSON"):
        unbundle(np.zeros(8, np.uint8))
    empty = unbundle(bundle({"e": np.zeros(0, np.float32), "f": np.ones(2, np.float32)}))
    assert empty["e"].shape == (0,) and empty["e"].dtype == np.float32 and list(empty["f"]) == [1, 1]


def test_pack_bundle_leaves_the_state_whole_unless_told_to_consume_it():
    state = _mixed_state()
    pack_bundle(state)
    assert list(state) == list(_mixed_state())
    pack_bundle(state, consume=True)
    assert state == {}


def test_pack_refuses_what_it_cannot_send():
    with pytest.raises(WireError, match="in two groups"):
        pack({"k": np.zeros(1)}, {"a": ["k"], "b": ["k"]})
    with pytest.raises(WireError, match="cannot be packed"):
        pack({"k": np.array(["text"])})
    with pytest.raises(WireError, match="no NumPy equivalent"):
        pack({"k": torch.zeros(2, dtype=torch.bfloat16)})


def test_a_model_message_is_one_bundle_of_a_buffer_per_dtype_and_the_index():
    state = build_model("tiny", load_label_set("cxrlt2026").num_seen, image_size=64).state_dict()
    record = server_records.to_record(state)
    dtypes = {str(v.dtype).removeprefix("torch.") for v in state.values()}
    assert len(state) > 300 and list(record) == [BUNDLE]
    inside = unbundle(npy_view(record[BUNDLE]))
    assert sorted(inside) == sorted([INDEX, *(f"pack/rest/{d}" for d in dtypes)])
    assert list(client_records.to_record(state)) == [BUNDLE]  # both sides send the same shape
    out = server_records.from_record(record)
    assert list(out) == list(state) and all(torch.equal(torch.from_numpy(out[k].copy()), v) for k, v in state.items())


def test_the_site_audit_log_lists_the_tensors_of_a_pack_and_the_arrays_of_other_records():
    from flwr.app import ArrayRecord

    from client.audit import _tensors

    packed = client_records.to_record({"router.w": np.zeros((2, 3), np.float32), "router.n": np.array(1, np.int64)})
    assert _tensors(packed) == {"router.w": ["float32", [2, 3]], "router.n": ["int64", []]}
    legacy = ArrayRecord([np.zeros(4, np.float32)])  # SecAgg+'s legacy messages are not packs
    assert _tensors(legacy) == {"0": ["float32", [4]]}


# -- .npy bytes (shared_models/npy.py) --------------------------------------------------------------------------
def _backed_by(v: np.ndarray, data: bytes) -> bool:
    while isinstance(v, np.ndarray):
        v = v.base
    return v is data


@pytest.mark.parametrize("value", [np.arange(12, dtype=np.float32).reshape(3, 4), np.array(5, np.int64),
                                   np.linspace(0, 1, 7)])
def test_npy_view_is_a_read_only_view_on_the_message_bytes(value):
    a = Array(**npy_fields(value))
    assert a.data == Array.from_numpy_ndarray(value).data  # the bytes Flower would write
    v = npy_view(a)
    np.testing.assert_array_equal(v, value)
    assert v.dtype == value.dtype and v.shape == value.shape
    assert not v.flags.writeable and _backed_by(v, a.data)  # no copy of the bytes


def test_npy_view_falls_back_to_a_copy_when_the_bytes_are_not_plain_c_order_npy():
    fortran = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    a = Array.from_numpy_ndarray(fortran)
    assert b"'fortran_order': True" in a.data[:128]
    np.testing.assert_array_equal(npy_view(a), fortran)
    v2 = np.arange(4, dtype=np.float64)
    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, np.lib.format.header_data_from_array_1_0(v2))
    a2 = Array(dtype="float64", shape=(4,), stype="numpy.ndarray", data=header.getvalue() + v2.tobytes())
    np.testing.assert_array_equal(npy_view(a2), v2)  # a version-2 header (4-byte length), still a view
    assert _backed_by(npy_view(a2), a2.data)
    a3 = Array(dtype="float64", shape=(4,), stype="numpy.ndarray", data=a2.data[:6] + b"\x03" + a2.data[7:])
    assert _backed_by(npy_view(a3), a3.data) and np.array_equal(npy_view(a3), v2)  # version 3 (UTF-8 header)
    short = Array(dtype="float64", shape=(5,), stype="numpy.ndarray", data=npy_fields(v2)["data"])
    np.testing.assert_array_equal(npy_view(short), v2)  # a shape that does not fit the bytes: not viewed
    torch_array = Array.from_torch_tensor(torch.arange(3.0))
    np.testing.assert_array_equal(npy_view(torch_array), [0.0, 1.0, 2.0])
