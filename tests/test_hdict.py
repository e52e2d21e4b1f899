"""HALCON's binary .hdict files (halcdl.io.hdict) and the dict file / JSON operators.

References: the real files HALCON and MVTec's Deep Learning Tool wrote
(/work/shared/data/halcon_files), the Deep Learning Tool's SQLite project the labels were
exported from, and the byte layout decoded independently here with ``struct``.
"""
from __future__ import annotations

import os
import sqlite3
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import halcdl as ha
from halcdl.errors import HOperatorError
from halcdl.io import files as io_files
from helpers import halcon_files_dir
from halcdl.io.hdict import (
    MAX_DEPTH,
    MixedTuple,
    parse_hdict,
    read_hdict,
    serialize_hdict,
    write_hdict,
)

DATA = Path(halcon_files_dir() or "/nonexistent/halcon_files")
REAL = ["cup_detection/labels.hdict", "detection_train_info.hdict",
        "detection_preprocess_params_a.hdict", "detection_preprocess_params_b.hdict"]

needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="real HALCON files not available")


def _code(fn) -> int:
    with pytest.raises(HOperatorError) as info:
        fn()
    return info.value.error_code


# --------------------------------------------------------------------------------------------
# the real files
# --------------------------------------------------------------------------------------------
@needs_data
@pytest.mark.parametrize("name", REAL)
def test_real_file_reads_and_writes_back_byte_identical(name, tmp_path):
    raw = (DATA / name).read_bytes()
    d = read_hdict(DATA / name)
    assert isinstance(d, dict) and d
    assert serialize_hdict(d) == raw
    out = tmp_path / "copy.hdict"
    write_hdict(d, out)
    assert out.read_bytes() == raw


def _halcon_string(s: str) -> bytes:
    raw = s.encode() + b"\0u"
    return struct.pack(">I", len(raw)) + raw


@needs_data
def test_writer_reproduces_halcon_bytes_of_a_hand_built_dict():
    """The preprocess params built as a Python dict serialise to exactly HALCON's file; the
    bytes are also assembled here with struct from the layout in docs/hdict.md."""
    params = {"model_type": "detection", "instance_type": "rectangle1", "image_width": 512,
              "image_height": 512, "image_num_channels": 3, "image_range_min": -127.0,
              "image_range_max": 128.0, "normalization_type": "none",
              "domain_handling": "full_domain", "augmentation": "true"}
    raw = (DATA / "detection_preprocess_params_a.hdict").read_bytes()
    assert serialize_hdict(params) == raw
    assert read_hdict(DATA / "detection_preprocess_params_a.hdict") == params
    body = b"HDICTIONARY\0" + bytes([1, 1]) + struct.pack(">Q", len(params))
    for k, v in params.items():
        body += b"\x04" + _halcon_string(k) + b"\x00"
        if isinstance(v, str):
            body += struct.pack(">IQ", 4, 1) + _halcon_string(v)
        elif isinstance(v, int):
            body += struct.pack(">IQq", 1, 1, v)
        else:
            body += struct.pack(">IQd", 2, 1, v)
    assert body + b"YRANOITCIDH" == raw


@needs_data
def test_train_info_structure_and_shared_handles():
    t = read_hdict(DATA / "detection_train_info.hdict")
    assert list(t) == ["train_infos", "evaluation_infos", "epoch", "best_value"]
    assert len(t["train_infos"]) == 78
    mp = t["train_infos"][0]["model_params"]
    assert mp["capacity"] == "high" and mp["bbox_heads_weight"] == 1.0
    assert isinstance(mp["class_ids"], MixedTuple) and mp["class_ids"] == list(range(1, 11))
    assert mp["class_ids_no_orientation"] == []
    assert len(mp["class_names"]) == 10 and mp["class_names"][0] == "Omega-3"
    infos = t["train_infos"]
    # epochs 5 and 6 share one best_info dict: HALCON stored it once and referenced it
    b5, b6 = infos[5]["best_evaluation"], infos[6]["best_evaluation"]
    assert b6["best_info"] is b5["best_info"] and b5["best_info_train"] is b5["best_info"]
    assert set(b5["best_info"]) >= {"epoch", "iteration", "result"}


def _dltp_boxes(path: Path) -> dict:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = dict(con.execute("select id, name from labelclasses"))
        rows = con.execute(
            "select images.url, labels.labelclass_id, labels.region, labels.regiontype "
            "from labels join images on images.id = labels.image_id order by labels.id")
        out: dict = {}
        for url, cls, region, rtype in rows:
            assert rtype == 2 and len(region) == 41 and region[0] == 1
            x, y, w, h, angle = struct.unpack(">5d", region[1:])
            out.setdefault(url.rsplit("/", 1)[-1], []).append((y, x, w, h, angle, names[cls]))
        return out
    finally:
        con.close()


@needs_data
def test_labels_match_the_deep_learning_tool_project():
    """The dataset's rectangle2 boxes are the tool's (x, y, width, height, angle) regions:
    row = y - 0.5, col = x - 0.5 (the tool counts from the pixel corner, HALCON from its
    centre), length1 = width / 2, length2 = height / 2, phi = -angle."""
    d = read_hdict(DATA / "cup_detection/labels.hdict")
    ref = _dltp_boxes(DATA / "cup_detection/cup_project.dltp")
    names = dict(zip(ha.get_dict_tuple(d, "class_ids"), ha.get_dict_tuple(d, "class_names")))
    assert len(d["samples"]) == len(ref) == 22
    n_boxes = 0
    for s in d["samples"]:
        get = lambda k: np.atleast_1d(np.asarray(s[k], dtype=np.float64))  # noqa: E731
        ours = sorted(zip(get("bbox_row"), get("bbox_col"), get("bbox_length1"),
                          get("bbox_length2"), get("bbox_phi"),
                          [names[int(c)] for c in np.atleast_1d(s["bbox_label_id"])]))
        theirs = sorted((y - 0.5, x - 0.5, w / 2, h / 2, -a, c)
                        for y, x, w, h, a, c in ref[s["image_file_name"]])
        assert len(ours) == len(theirs)
        for o, t in zip(ours, theirs):
            assert o[5] == t[5]
            np.testing.assert_allclose(o[:5], t[:5], rtol=0, atol=1e-9)
        n_boxes += len(ours)
    assert n_boxes == sum(len(v) for v in ref.values())


# --------------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------------
def _roundtrip(obj, tmp_path):
    p = tmp_path / "x.hdict"
    write_hdict(obj, p)
    back = read_hdict(p)
    assert serialize_hdict(back) == p.read_bytes()  # stable: writing again is identical
    return back


def test_roundtrip_values(tmp_path):
    obj = {
        "int": 7, "neg": -(2 ** 63), "big": 2 ** 63 - 1, "beyond32": 2 ** 40, "real": 0.1,
        "nan": float("nan"), "inf": -float("inf"), "str": "häßlich 杯子 🙂", "empty": [],
        "ints": [1, 2, 3], "reals": [0.5, -1e300], "strs": ["a", "", "b"],
        "mixed": [1, 2.5, "x"], "mixed_with_dict": [1, {"k": "v"}],
        "nested": {"a": {"b": {"c": [1, 2]}}}, "dicts": [{"i": 0}, {"i": 1}],
        17: "integer key", -3: [1.0, 2.0],
        "np": np.arange(4, dtype=np.int32), "npf": np.float32(0.25), "np0": np.array(3.5),
        "bool": True,
    }
    back = _roundtrip(obj, tmp_path)
    assert back["int"] == 7 and back["neg"] == -(2 ** 63) and back["big"] == 2 ** 63 - 1
    assert back["beyond32"] == 2 ** 40 and back["real"] == 0.1
    assert np.isnan(back["nan"]) and back["inf"] == -float("inf")
    assert back["str"] == "häßlich 杯子 🙂" and back["empty"] == []
    assert back["ints"] == [1, 2, 3] and back["reals"] == [0.5, -1e300]
    assert back["strs"] == ["a", "", "b"]
    assert back["mixed"] == [1, 2.5, "x"] and isinstance(back["mixed"], MixedTuple)
    assert back["mixed_with_dict"] == [1, {"k": "v"}]
    assert back["nested"] == {"a": {"b": {"c": [1, 2]}}}
    assert back["dicts"] == [{"i": 0}, {"i": 1}]
    assert back[17] == "integer key" and back[-3] == [1.0, 2.0]
    assert back["np"] == [0, 1, 2, 3] and back["npf"] == 0.25 and back["np0"] == 3.5
    assert back["bool"] == 1
    assert list(back) == list(obj)  # key order kept


def test_one_element_tuples_read_as_values_like_set_dict_tuple(tmp_path):
    d = ha.create_dict()
    ha.set_dict_tuple(d, "one", [5])
    ha.set_dict_tuple(d, "list1", [2.5])
    d["as_list"] = [3]
    back = _roundtrip(d, tmp_path)
    assert back == {"one": 5, "list1": 2.5, "as_list": 3}
    assert ha.get_dict_tuple(back, "as_list") == [3]
    ds = _roundtrip({"samples": [{"image_id": 1}]}, tmp_path)
    assert ds["samples"] == {"image_id": 1}
    assert ha.get_dict_tuple(ds, "samples") == [{"image_id": 1}]


def test_mixed_tuple_of_one_type_stays_mixed(tmp_path):
    back = _roundtrip({"m": MixedTuple(["a", "b"]), "m1": MixedTuple([4])}, tmp_path)
    assert isinstance(back["m"], MixedTuple) and back["m"] == ["a", "b"]
    assert isinstance(back["m1"], MixedTuple) and back["m1"] == [4]
    assert not isinstance(_roundtrip({"p": ["a", "b"]}, tmp_path)["p"], MixedTuple)


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "int32", "int64",
                                   "float32", "float64"])
@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1), (4, 6, 3)])
def test_roundtrip_images(dtype, shape, tmp_path):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        img = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    else:
        img = rng.standard_normal(shape).astype(dtype)
    back = _roundtrip({"image": img, "id": 3}, tmp_path)
    assert back["image"].dtype == np.dtype(dtype) and back["image"].shape == shape
    assert np.array_equal(back["image"], img)
    assert back["image"].flags.writeable


def test_dlsample_with_images_roundtrips_exactly(tmp_path):
    rng = np.random.default_rng(1)
    sample = {"image": rng.random((16, 12, 3), dtype=np.float32),
              "segmentation_image": rng.integers(0, 4, (16, 12), dtype=np.uint8),
              "weight_image": rng.random((16, 12), dtype=np.float32),
              "image_id": 42, "bbox_row": [1.5, 2.5],
              "pyramid": [rng.random((4, 4), dtype=np.float32),
                          rng.random((2, 2), dtype=np.float32)]}
    back = _roundtrip(sample, tmp_path)
    for k in ("image", "segmentation_image", "weight_image"):
        assert back[k].dtype == sample[k].dtype and np.array_equal(back[k], sample[k])
    assert [a.shape for a in back["pyramid"]] == [(4, 4), (2, 2)]
    assert ha.get_dict_object(back, "image").shape == (16, 12, 3)
    assert back["image_id"] == 42 and back["bbox_row"] == [1.5, 2.5]


def test_shared_and_cyclic_dicts(tmp_path):
    shared = {"v": 1}
    d = {"a": shared, "b": [shared, {"w": 2}], "c": shared}
    back = _roundtrip(d, tmp_path)
    assert back["a"] is back["c"] is back["b"][0] and back["a"] == {"v": 1}
    node: dict = {"name": "n"}
    node["self"] = node
    top = {"node": node}
    back = _roundtrip(top, tmp_path)
    assert back["node"]["self"] is back["node"]


hyp = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_scalar = st.one_of(st.integers(-(2 ** 63), 2 ** 63 - 1),
                    st.floats(allow_nan=False, width=64),
                    st.text(alphabet=st.characters(blacklist_characters="\0",
                                                   blacklist_categories=("Cs",)), max_size=8))
_tuple = st.one_of(_scalar, st.lists(_scalar, max_size=5))
_dicts = st.recursive(
    st.dictionaries(st.one_of(st.text(max_size=6).filter(lambda s: "\0" not in s),
                              st.integers(-5, 5)), _tuple, max_size=4),
    lambda inner: st.dictionaries(st.text(max_size=6).filter(lambda s: "\0" not in s),
                                  st.one_of(_tuple, inner, st.lists(inner, min_size=2,
                                                                    max_size=3)),
                                  max_size=4),
    max_leaves=12)


def _norm(v):
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    if isinstance(v, list):
        v = [_norm(x) for x in v]
        return v[0] if len(v) == 1 else v
    return v


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_dicts)
def test_hypothesis_roundtrip(d):
    data = serialize_hdict(d)
    back = parse_hdict(data)
    assert back == _norm(d)
    assert serialize_hdict(back) == data


# --------------------------------------------------------------------------------------------
# damaged files: 7780 and nothing else, bounded memory
# --------------------------------------------------------------------------------------------
@needs_data
def test_every_truncation_raises_7780():
    raw = (DATA / "detection_preprocess_params_a.hdict").read_bytes()
    for n in range(len(raw)):
        assert _code(lambda: parse_hdict(raw[:n], "cut.hdict")) == 7780, n
    assert _code(lambda: parse_hdict(raw + b"\0", "long.hdict")) == 7780


@needs_data
def test_random_byte_flips_raise_7780_or_read():
    raw = bytearray((DATA / "cup_detection/labels.hdict").read_bytes())
    rng = np.random.default_rng(1234)
    failures = 0
    for _ in range(300):
        bad = bytearray(raw)
        for pos in rng.integers(0, len(raw), size=rng.integers(1, 4)):
            bad[pos] ^= int(rng.integers(1, 256))
        try:
            d = parse_hdict(bytes(bad), "flipped.hdict")
        except HOperatorError as err:
            assert err.error_code == 7780 and "flipped.hdict" in str(err)
            failures += 1
        else:
            assert isinstance(d, dict)
    assert failures > 100  # most flips hit structure, not a double's bits


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=300))
def test_hypothesis_garbage_raises_7780(data):
    for blob in (data, b"HDICTIONARY\0\x01\x01" + data):
        try:
            parse_hdict(blob, "garbage.hdict")
        except HOperatorError as err:
            assert err.error_code == 7780


def _header(n: int, top: int = 1) -> bytes:
    return b"HDICTIONARY\0" + bytes([1, top]) + struct.pack(">Q", n)


def _key(k: str) -> bytes:
    return b"\x04" + _halcon_string(k)


HOSTILE = {
    "huge_entry_count": _header(2 ** 63),
    "huge_tuple_count": _header(1) + _key("a") + b"\0" + struct.pack(">IQ", 2, 2 ** 61),
    "huge_string": _header(1) + _key("a") + b"\0" + struct.pack(">IQI", 4, 1, 2 ** 32 - 1)
    + b"\0" * 16,
    "huge_mixed": _header(1) + _key("a") + b"\0" + struct.pack(">IQ", 8, 2 ** 40),
    "huge_image": _header(1) + _key("a") + b"\x01" + struct.pack(">QIBQQQ", 1, 4, 3, 2 ** 31,
                                                                 2 ** 31, 3),
    "overflowing_image": _header(1) + _key("a") + b"\x01" + struct.pack(
        ">QIBQQQ", 1, 1, 3, 2 ** 63, 2 ** 63, 2 ** 63),
    "forward_reference": _header(1) + _key("a") + b"\0" + struct.pack(">IQIQ", 16, 1, 2, 5)
    + b"YRANOITCIDH",
    "unknown_handle": _header(1) + _key("a") + b"\0" + struct.pack(">IQI", 16, 1, 9)
    + b"\0" * 40,
    "bad_utf8": _header(1) + b"\x04" + struct.pack(">I", 4) + b"\xff\xfe\0u" + b"\0"
    + struct.pack(">IQ", 0, 0) + b"YRANOITCIDH",
    "wrong_magic": b"HDICTIONARZ\0" + b"\0" * 30,
    "wrong_version": b"HDICTIONARY\0\x02\x01" + b"\0" * 8 + b"YRANOITCIDH",
    "deep": b"".join(_header(1, 1 if i == 0 else 0) + _key("d") + b"\0"
                     + struct.pack(">IQI", 16, 1, 1) for i in range(MAX_DEPTH + 5))
    + _header(0, 0),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_headers_raise_7780(name):
    assert _code(lambda: parse_hdict(HOSTILE[name], name)) == 7780


def test_hostile_files_within_a_memory_limit(tmp_path):
    """A child process with a 1.5 GiB address-space limit (after importing halcdl) reads
    the hostile files and 200 random corruptions: each must end in 7780."""
    for name, blob in HOSTILE.items():
        (tmp_path / f"{name}.hdict").write_bytes(blob)
    src = textwrap.dedent(f"""
        import glob, resource, sys
        import numpy as np
        from halcdl.io.hdict import read_hdict, serialize_hdict, parse_hdict
        from halcdl.errors import HOperatorError
        base = serialize_hdict({{"a": [1, 2], "s": ["x" * 5] * 3, "d": [{{"k": 1.5}}] * 2,
                                 "img": np.ones((4, 4), np.uint16)}})
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + 1536 * 2 ** 20, hard))
        rng = np.random.default_rng(7)
        blobs = [open(f, "rb").read() for f in sorted(glob.glob({str(tmp_path)!r} + "/*"))]
        for _ in range(200):
            b = bytearray(base)
            pos = int(rng.integers(0, len(b) - 8))
            b[pos:pos + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
            blobs.append(bytes(b))
        for b in blobs:
            try:
                parse_hdict(b, "x")
            except HOperatorError as e:
                assert e.error_code == 7780, e
        print("ok", len(blobs))
    """)
    env = dict(os.environ, PYTHONPATH=str(Path(ha.__file__).parent.parent))
    res = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True,
                         env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("ok")


def test_missing_file_5200_and_directory_7780(tmp_path):
    assert _code(lambda: read_hdict(tmp_path / "nope.hdict")) == 5200
    assert _code(lambda: ha.read_dict(str(tmp_path / "nope"), [], [])) == 5200
    assert _code(lambda: read_hdict(tmp_path)) == 7780
    assert _code(lambda: read_hdict("/dev/zero")) == 7780  # would never end
    os.mkfifo(tmp_path / "fifo")
    assert _code(lambda: read_hdict(tmp_path / "fifo")) == 7780  # would block
    assert _code(lambda: ha.read_dict(str(tmp_path / "fifo"), [], [])) == 7780


# --------------------------------------------------------------------------------------------
# writing: bad values, atomicity
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value,code", [
    (object(), 1201), ([1, [2, 3]], 1201), (2 ** 63, 1301), ("a\0b", 1301),
    (np.zeros((2, 2), dtype=bool), 1201), (np.zeros((2, 2), dtype=np.complex64), 1201),
    (np.zeros((2, 2, 2, 2), np.float32), 1201), (np.zeros((0, 3), np.uint8), 1301),
    (b"bytes", 1201), (1j, 1201),
])
def test_unwritable_values_raise_and_write_nothing(value, code, tmp_path):
    p = tmp_path / "x.hdict"
    assert _code(lambda: write_hdict({"ok": 1, "bad": value}, p)) == code
    assert not p.exists() and list(tmp_path.iterdir()) == []


def test_unwritable_key_and_non_dict(tmp_path):
    assert _code(lambda: write_hdict({1.5: 1}, tmp_path / "a.hdict")) == 1201
    assert _code(lambda: write_hdict([1, 2], tmp_path / "a.hdict")) == 1201
    deep: dict = {}
    cur = deep
    for _ in range(MAX_DEPTH + 5):
        cur["d"] = {}
        cur = cur["d"]
    assert _code(lambda: write_hdict(deep, tmp_path / "a.hdict")) == 1301
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "keep.hdict"
    write_hdict({"old": 1}, p)
    before = p.read_bytes()

    def boom(f, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io_files, "_write_bytes", boom)
    assert _code(lambda: write_hdict({"new": 2}, p)) == 7781
    assert p.read_bytes() == before and [x.name for x in tmp_path.iterdir()] == ["keep.hdict"]
    assert _code(lambda: write_hdict({"x": 1}, tmp_path / "no" / "dir.hdict")) == 7781


# --------------------------------------------------------------------------------------------
# operators
# --------------------------------------------------------------------------------------------
def test_read_write_dict_operators(tmp_path):
    d = {"a": [1, 2], "b": {"c": "x"}, "img": np.arange(12, dtype=np.uint8).reshape(3, 4)}
    ha.write_dict(d, str(tmp_path / "d.hdict"), [], [])
    back = ha.read_dict(str(tmp_path / "d"), [], [])  # default extension appended
    assert back["a"] == [1, 2] and back["b"] == {"c": "x"}
    assert np.array_equal(back["img"], d["img"])
    ha.write_dict({"a": [1, 2]}, str(tmp_path / "j.txt"), "file_type", "json")
    assert ha.read_dict(str(tmp_path / "j.txt"), "convert_json_arrays_to",
                        "tuple_if_possible") == {"a": [1, 2]}
    assert ha.read_dict(str(tmp_path / "j.txt"), [], []) == {"a": {0: 1, 1: 2}}
    assert _code(lambda: ha.read_dict(str(tmp_path / "d.hdict"), "nope", 1)) == 1302
    assert _code(lambda: ha.read_dict(str(tmp_path / "d.hdict"), ["a", "b"], [1])) == 1403
    assert _code(lambda: ha.read_dict(str(tmp_path / "d.hdict"), "convert_json_arrays_to",
                                      "list")) == 1303
    assert _code(lambda: ha.write_dict(d, str(tmp_path / "e.hdict"), "file_type",
                                       "xml")) == 1304
    assert _code(lambda: ha.write_dict(d, str(tmp_path / "e.hdict"), "compress", 1)) == 1303
    assert _code(lambda: ha.write_dict("nodict", str(tmp_path / "e.hdict"), [], [])) == 1201
    assert _code(lambda: ha.write_dict(d, str(tmp_path / "e.json"), [], [])) == 1201
    assert not (tmp_path / "e.json").exists()
    (tmp_path / "broken.json").write_text('{"a": [1, ')
    assert _code(lambda: ha.read_dict(str(tmp_path / "broken.json"), [], [])) == 7780


def test_json_operators():
    s = '{"n": 1, "r": 2.5, "s": "杯子", "t": true, "f": false, "z": null, ' \
        '"arr": [1, "a", {"k": [true]}], "o": {"e": []}}'
    d = ha.json_to_dict(s, [], [])
    assert d == {"n": 1, "r": 2.5, "s": "杯子", "t": 1, "f": 0, "z": "HNULL",
                 "arr": {0: 1, 1: "a", 2: {"k": {0: 1}}}, "o": {"e": {}}}
    d2 = ha.json_to_dict(s, ["json_value_true", "json_value_null", "convert_json_arrays_to"],
                         ["yes", -1, "tuple_if_possible"])
    assert d2["t"] == "yes" and d2["z"] == -1 and d2["o"] == {"e": []}
    assert d2["arr"] == {0: 1, 1: "a", 2: {"k": ["yes"]}}
    import json
    assert json.loads(ha.dict_to_json(d, [], [])) == json.loads(
        s.replace("true", "1").replace("false", "0").replace("null", '"HNULL"')
        .replace('"e": []', '"e": {}'))
    assert ha.json_to_dict(ha.dict_to_json({"a": [1, 2], "b": "x"}, [], []), [], []) == {
        "a": {0: 1, 1: 2}, "b": "x"}
    assert _code(lambda: ha.json_to_dict("[1, 2]", [], [])) == 1301
    assert _code(lambda: ha.json_to_dict("{bad", [], [])) == 1301
    assert _code(lambda: ha.dict_to_json({"i": np.zeros((2, 2))}, [], [])) == 1201
    assert _code(lambda: ha.dict_to_json({"x": float("nan")}, [], [])) == 1301
    assert _code(lambda: ha.dict_to_json({}, "indent", 2)) == 1302


def test_gen_params_as_dict(tmp_path):
    assert ha.json_to_dict('{"t": true}', {"json_value_true": "T"}, []) == {"t": "T"}
    ha.write_dict({"a": 1}, str(tmp_path / "x"), {"file_type": "json"}, [])
    assert (tmp_path / "x").read_text() == '{"a": 1}'
    assert ha.read_dict(str(tmp_path / "x"), {}, []) == {"a": 1}
