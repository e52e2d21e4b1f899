"""Interop helpers of HALCON's binding (from_python_dict, as_python_dict,
himage_from_numpy_array, himage_as_numpy_array), set_dict_tuple_at, and serialized models
(serialize/deserialize_dl_model and _dl_classifier): round trips, bit-identical training
after a round trip, bad input."""
from __future__ import annotations

import copy

import numpy as np
import pytest

import halcdl as ha
from halcdl import errors
from halcdl.numpy_interop import himage_as_numpy_array, himage_from_numpy_array
from halcdl.python_interop import as_python_dict, from_python_dict


def _code(info) -> int:
    return info.value.error_code


# --------------------------------------------------------------------------------------------
# dict interop
# --------------------------------------------------------------------------------------------
def test_from_python_dict_nested_arrays_images():
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    src = {"a": 1, "t": (1, 2.5, "x"), "v": np.array([1.0, 2.0]), "n": {"deep": {"k": "v"}},
           7: "int key", "img": img, "np": np.int64(3)}
    before = copy.deepcopy({k: v for k, v in src.items() if k != "img"})
    d = from_python_dict(src)
    assert d is not src and d["n"] is not src["n"]
    assert ha.get_dict_tuple(d, "t") == [1, 2.5, "x"]
    assert ha.get_dict_tuple(d, "v") == [1.0, 2.0]
    assert ha.get_dict_tuple_s(d, "a") == 1 and ha.get_dict_tuple_s(d, 7) == "int key"
    assert type(ha.get_dict_tuple_s(d, "np")) is int
    assert ha.get_dict_object(d, "img") is img  # images by reference, as HALCON's objects
    assert ha.get_dict_tuple_s(ha.get_dict_tuple_s(ha.get_dict_tuple_s(d, "n"), "deep"),
                               "k") == "v"
    # the source is untouched
    assert {k: v for k, v in src.items() if k != "img"}.keys() == before.keys()
    assert src["t"] == (1, 2.5, "x") and isinstance(src["v"], np.ndarray)


def test_as_python_dict_copies_and_recurses():
    d = ha.create_dict()
    inner = ha.create_dict()
    ha.set_dict_tuple(inner, "x", [1, 2])
    ha.set_dict_tuple(d, "inner", inner)
    ha.set_dict_tuple(d, "s", "one")
    py = as_python_dict(d)
    assert py == {"inner": {"x": [1, 2]}, "s": "one"}
    py["inner"]["x"].append(3)
    py["new"] = 1
    assert ha.get_dict_tuple(inner, "x") == [1, 2] and "new" not in d
    # round trip
    assert as_python_dict(from_python_dict(py)) == py
    # top-level names are the same functions
    assert ha.as_python_dict is as_python_dict and ha.from_python_dict is from_python_dict


@pytest.mark.parametrize("bad, code", [
    ("not a dict", errors.H_ERR_WIPT1),
    ({1.5: "float key"}, errors.H_ERR_WIPT1),
    ({"k": {1, 2}}, errors.H_ERR_WIPT1),
    ({"k": [1, {"d": 1}]}, errors.H_ERR_WIPT1),
    ({"k": [1, None]}, errors.H_ERR_WIPT1),
    ({"k": object()}, errors.H_ERR_WIPT1),
    ({"k": np.zeros((2, 2), dtype=np.complex64)}, errors.H_ERR_WIPT1),
])
def test_from_python_dict_bad_input(bad, code):
    with pytest.raises(ha.HOperatorError) as info:
        from_python_dict(bad)
    assert _code(info) == code
    assert info.value.operator == "from_python_dict"


def test_dict_interop_refuses_cycles():
    a: dict = {}
    a["self"] = a
    for f in (from_python_dict, as_python_dict):
        with pytest.raises(ha.HOperatorError) as info:
            f(a)
        assert _code(info) == errors.H_ERR_WIPV1
    with pytest.raises(ha.HOperatorError) as info:
        as_python_dict(42)
    assert _code(info) == errors.H_ERR_WIPT1


# --------------------------------------------------------------------------------------------
# image interop
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3), (5, 7, 1)])
def test_himage_round_trip(dtype, shape):
    a = (np.arange(np.prod(shape)) % 200).astype(dtype).reshape(shape)
    obj = himage_from_numpy_array(a)
    assert isinstance(obj, ha.HObject) and ha.count_obj(obj) == 1
    back = himage_as_numpy_array(obj)
    assert back is a  # no copy
    np.testing.assert_array_equal(back, a)
    # works with the other object operators and as a model input
    assert himage_as_numpy_array(ha.select_obj(ha.concat_obj(obj, obj), 2)) is a


def test_himage_bool_and_plain_array():
    m = np.array([[True, False], [False, True]])
    got = himage_as_numpy_array(himage_from_numpy_array(m))
    assert got.dtype == np.uint8 and got.tolist() == [[1, 0], [0, 1]]
    a = np.ones((3, 3), np.float32)
    assert himage_as_numpy_array(a) is a  # a plain array is an image object already


@pytest.mark.parametrize("bad, code", [
    ([[1, 2], [3, 4]], errors.H_ERR_WIPT1),
    (np.zeros(5), errors.H_ERR_WIPV1),
    (np.zeros((2, 2, 2, 2)), errors.H_ERR_WIPV1),
    (np.zeros((0, 3)), errors.H_ERR_WIPV1),
    (np.zeros((2, 2), np.complex128), errors.H_ERR_WIPT1),
    (np.array([["a", "b"]]), errors.H_ERR_WIPT1),
])
def test_himage_from_numpy_array_bad_input(bad, code):
    with pytest.raises(ha.HOperatorError) as info:
        himage_from_numpy_array(bad)
    assert _code(info) == code


def test_himage_as_numpy_array_needs_one_image():
    two = ha.concat_obj(np.zeros((2, 2)), np.ones((2, 2)))
    for obj, code in ((two, errors.H_ERR_WIPN1), (ha.gen_empty_obj(), errors.H_ERR_WIPN1),
                      ("image", errors.H_ERR_WIPT1)):
        with pytest.raises(ha.HOperatorError) as info:
            himage_as_numpy_array(obj)
        assert _code(info) == code


# --------------------------------------------------------------------------------------------
# set_dict_tuple_at
# --------------------------------------------------------------------------------------------
def test_set_dict_tuple_at():
    d = {"t": [1, 2, 3], "s": 5}
    ha.set_dict_tuple_at(d, "t", 1, 20)
    assert d["t"] == [1, 20, 3]
    ha.set_dict_tuple_at(d, "t", [0, 2], ["a", "c"])
    assert d["t"] == ["a", 20, "c"]
    ha.set_dict_tuple_at(d, "t", [3, 4], 0)  # appends, in order
    assert d["t"] == ["a", 20, "c", 0, 0]
    ha.set_dict_tuple_at(d, "s", 0, 6)  # a single value is a tuple of one
    assert ha.get_dict_tuple(d, "s") == [6]
    ha.set_dict_tuple_at(d, "s", 1, 7)
    assert ha.get_dict_tuple(d, "s") == [6, 7]


@pytest.mark.parametrize("key, index, value, code", [
    ("missing", 0, 1, errors.H_ERR_DICT_KEY),
    ("t", 5, 1, errors.H_ERR_WIPV3),
    ("t", -1, 1, errors.H_ERR_WIPV3),
    ("t", [0, 1], [1, 2, 3], errors.H_ERR_WIPN4),
    ("t", [], 1, errors.H_ERR_WIPN3),
    ("t", 0.5, 1, errors.H_ERR_WIPT3),
    ("t", 0, [None], errors.H_ERR_WIPT4),
    ("img", 0, 1, errors.H_ERR_WT_CTRL_EXPECTED),
    ("sub", 0, 1, errors.H_ERR_WT_CTRL_EXPECTED),
    (1.5, 0, 1, errors.H_ERR_WIPT2),
])
def test_set_dict_tuple_at_bad_input_changes_nothing(key, index, value, code):
    d = {"t": [1, 2, 3], "img": np.zeros((2, 2)), "sub": {"a": 1}}
    before = {"t": list(d["t"]), "sub": dict(d["sub"])}
    with pytest.raises(ha.HOperatorError) as info:
        ha.set_dict_tuple_at(d, key, index, value)
    assert _code(info) == code
    assert d["t"] == before["t"] and d["sub"] == before["sub"] and set(d) == {"t", "img", "sub"}
    with pytest.raises(ha.HOperatorError) as info:
        ha.set_dict_tuple_at("nodict", "t", 0, 1)
    assert _code(info) == errors.H_ERR_WIPT1


# --------------------------------------------------------------------------------------------
# serialized models
# --------------------------------------------------------------------------------------------
def _model(seed=11, solver="adam"):
    ha.set_system("seed_rand", seed)
    m = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    ha.set_dl_model_param(m, "image_dimensions", [16, 16, 1])
    ha.set_dl_model_param(m, "class_ids", [0, 1, 2])
    ha.set_dl_model_param(m, "batch_size", 4)
    ha.set_dl_model_param(m, "solver_type", solver)
    return m


def _batch(rng, n=4):
    return [{"image": rng.standard_normal((16, 16)).astype(np.float32),
             "image_label_id": int(rng.integers(0, 3))} for _ in range(n)]


def _weights(m):
    core = m.core
    return {n: np.array(core.get_param(n)) for n in core.param_names()}


@pytest.mark.filterwarnings("ignore::halcdl.NotPretrainedWarning")
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_serialize_round_trip_trains_bit_identically(solver):
    rng = np.random.default_rng(0)
    m = _model(solver=solver)
    ha.set_dl_model_param(m, "class_names", ["a", "b", "c"])
    ha.train_dl_model_batch(m, _batch(rng))  # optimizer state and BN statistics non-trivial
    ha.train_dl_model_batch(m, _batch(rng))
    before = _weights(m)
    item = ha.serialize_dl_model(m)
    assert isinstance(item, ha.SerializedItem) and len(bytes(item)) > 0
    np.testing.assert_equal(_weights(m), before)  # serializing changes nothing
    m2 = ha.deserialize_dl_model(item)
    assert m2 is not m
    w2 = _weights(m2)
    assert w2.keys() == before.keys()
    for k in before:
        assert np.array_equal(w2[k], before[k]), k
    for key in ("class_names", "solver_type", "batch_size", "image_dimensions",
                "learning_rate"):
        assert ha.get_dl_model_param(m2, key) == ha.get_dl_model_param(m, key)
    test = _batch(np.random.default_rng(5), 3)
    r1 = ha.apply_dl_model(m, test, [])
    r2 = ha.apply_dl_model(m2, test, [])
    assert r1 == r2
    # two more steps on both give the same weights, bit for bit (optimizer state, step
    # counters and dropout seeds travelled along)
    for _ in range(2):
        b = _batch(rng)
        l1 = ha.train_dl_model_batch(m, b)
        l2 = ha.train_dl_model_batch(m2, b)
        assert l1 == l2
    w1, w2 = _weights(m), _weights(m2)
    for k in w1:
        assert np.array_equal(w1[k], w2[k]), k
    # the same bytes as write_dl_model's file, so either one deserializes
    assert bytes(ha.serialize_dl_model(m)) == bytes(ha.serialize_dl_model(m))


@pytest.mark.filterwarnings("ignore::halcdl.NotPretrainedWarning")
def test_serialized_item_reads_model_files(tmp_path):
    m = _model()
    path = tmp_path / "m.hdl"
    ha.write_dl_model(m, str(path))
    m2 = ha.deserialize_dl_model(ha.SerializedItem(path.read_bytes()))
    assert ha.get_dl_model_param(m2, "class_ids") == [0, 1, 2]
    m3 = ha.deserialize_dl_model(path.read_bytes())  # raw bytes are accepted too
    assert ha.get_dl_model_param(m3, "image_dimensions") == [16, 16, 1]


@pytest.mark.filterwarnings("ignore::halcdl.NotPretrainedWarning")
def test_serialize_dl_classifier_round_trip():
    ha.set_system("seed_rand", 3)
    c = ha.read_dl_classifier("pretrained_dl_classifier_compact.hdl")
    ha.set_dl_classifier_param(c, "classes", ["cat", "dog"])
    ha.set_dl_classifier_param(c, "image_dimensions", [16, 16, 1])
    item = ha.serialize_dl_classifier(c)
    c2 = ha.deserialize_dl_classifier(item)
    assert isinstance(c2, ha.DLClassifier)
    assert ha.get_dl_classifier_param(c2, "classes") == ["cat", "dog"]
    img = np.random.default_rng(1).standard_normal((16, 16)).astype(np.float32)
    r1 = ha.apply_dl_classifier(img, c)
    r2 = ha.apply_dl_classifier(img, c2)
    assert ha.get_dl_classifier_result(r1, 0, "predicted_classes") == \
        ha.get_dl_classifier_result(r2, 0, "predicted_classes")
    assert ha.get_dl_classifier_result(r1, 0, "confidences") == \
        ha.get_dl_classifier_result(r2, 0, "confidences")


@pytest.mark.filterwarnings("ignore::halcdl.NotPretrainedWarning")
def test_serialization_bad_input():
    m = _model()
    data = bytes(ha.serialize_dl_model(m))
    cases = [
        (ha.serialize_dl_model, "model", errors.H_ERR_WIPT1),
        (ha.deserialize_dl_model, 42, errors.H_ERR_WIPT1),
        (ha.deserialize_dl_model, b"garbage bytes, not a model", errors.H_ERR_DL_FILE_READ),
        (ha.deserialize_dl_model, data[: len(data) // 2], errors.H_ERR_DL_FILE_READ),
        (ha.deserialize_dl_model, data[:-1] + bytes([data[-1] ^ 1]), errors.H_ERR_DL_FILE_READ),
        (ha.serialize_dl_classifier, m, errors.H_ERR_WIPT1),
        (ha.deserialize_dl_classifier, "x", errors.H_ERR_WIPT1),
    ]
    for f, arg, code in cases:
        with pytest.raises(ha.HOperatorError) as info:
            f(arg)
        assert _code(info) == code, (f.__name__, arg if not isinstance(arg, bytes) else "bytes")
    seg = ha.read_dl_model("pretrained_dl_segmentation_compact.hdl")
    with pytest.raises(ha.HOperatorError) as info:
        ha.deserialize_dl_classifier(ha.serialize_dl_model(seg))
    assert _code(info) == errors.H_ERR_WIPV1
    ha.clear_dl_model(m)
    with pytest.raises(ha.HOperatorError) as info:
        ha.serialize_dl_model(m)
    assert _code(info) == errors.H_ERR_HANDLE_CLEARED


# --------------------------------------------------------------------------------------------
# a script written for HALCON's binding runs after changing only the import
# --------------------------------------------------------------------------------------------
HALCON_STYLE_SCRIPT = '''
import numpy as np
import halcdl as ha                      # the script said: import halcon as ha
from halcdl.numpy_interop import himage_from_numpy_array, himage_as_numpy_array
from halcdl.python_interop import as_python_dict, from_python_dict

ha.set_system('seed_rand', 42)
model = ha.read_dl_model('pretrained_dl_classifier_compact.hdl')
ha.set_dl_model_param(model, 'image_dimensions', [16, 16, 1])
ha.set_dl_model_param(model, 'class_ids', [0, 1])
ha.set_dl_model_param(model, 'class_names', ['good', 'bad'])
pixels = (np.arange(256, dtype=np.float32).reshape(16, 16) - 128.0)
image = himage_from_numpy_array(pixels)
sample = ha.create_dict()
ha.set_dict_object(image, sample, 'image')
ha.set_dict_tuple(sample, 'image_id', 1)
result = ha.apply_dl_model(model, [sample], [])
result = as_python_dict(result[0])
samples = [from_python_dict({'image': himage_as_numpy_array(image), 'image_label_id': 1})] * 2
ha.set_dl_model_param(model, 'batch_size', 2)
loss = as_python_dict(ha.train_dl_model_batch(model, samples))
item = ha.serialize_dl_model(model)
model2 = ha.deserialize_dl_model(item)
'''


@pytest.mark.filterwarnings("ignore::halcdl.NotPretrainedWarning")
def test_halcon_style_script_runs():
    ns: dict = {}
    exec(compile(HALCON_STYLE_SCRIPT, "<halcon script>", "exec"), ns)  # noqa: S102
    r = ns["result"]
    assert sorted(r["classification_class_names"]) == ["bad", "good"]
    assert abs(sum(r["classification_confidences"]) - 1.0) < 1e-5
    assert np.isfinite(ns["loss"]["total_loss"])
    assert ha.get_dl_model_param(ns["model2"], "class_names") == ["good", "bad"]
    # the one-image HObject in the sample is the same input as its pixel array
    m = ha.deserialize_dl_model(ns["item"])
    img_obj = ha.apply_dl_model_s(m, {"image": himage_from_numpy_array(ns["pixels"])}, [])
    assert img_obj == ha.apply_dl_model_s(m, {"image": ns["pixels"]}, [])
    assert np.asarray(himage_from_numpy_array(ns["pixels"])).shape == (16, 16)
