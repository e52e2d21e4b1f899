"""Fuzzing every public operator (halcdl.operators.OPERATORS) with hypothesis: hostile
argument types, sizes, dtypes, NaN/Inf, huge and negative numbers, odd strings.

Rules checked (docs/robustness.md): an operator returns or raises HOperatorError /
HTupleConversionError, nothing else; when it raises, the model it was given is unchanged
(weights, running statistics, optimizer state, parameters).  File names are generated only
inside the test's temporary folder (and the working directory is that folder), so nothing is
written elsewhere.  Fixed seed (derandomize), bounded examples: HALCDL_FUZZ_EXAMPLES (default
12 per operator) for a longer run by hand.  HOperatorErrors that come from the conversion
layer's fallback (a stray Python exception wrapped, see operators/_tuple.py) are counted and
printed; HALCDL_FUZZ_STRICT=1 makes them fail too.
"""
from __future__ import annotations

import collections
import inspect
import math
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import halcdl as ha
import halcdl.operators as ops
from halcdl.errors import HTupleConversionError
from halcdl.operators import dl_model as dlm

EXAMPLES = int(os.environ.get("HALCDL_FUZZ_EXAMPLES", "12"))
STRICT = os.environ.get("HALCDL_FUZZ_STRICT") == "1"
FALLBACKS: collections.Counter = collections.Counter()
CALLS: collections.Counter = collections.Counter()

# --- values ---------------------------------------------------------------------------------
huge_ints = st.sampled_from([0, 1, -1, 2, 3, 7, 2**31 - 1, 2**31, -2**31 - 1, 2**63, 2**64,
                             2**64 - 1, 2**70, -2**70, 10**400])
odd_floats = st.sampled_from([0.0, -0.0, 0.5, 1.0, -1.0, 1e-300, 1e-40, 1e39, 1e300,
                              float("nan"), float("inf"), float("-inf"), 3.4028235e38])
odd_text = st.one_of(
    st.sampled_from(["", "default", "sgd", "adam", "cpu", "gpu", "true", "false", "\0", "\ud800",
                     "a\0b", "x" * 10000, "../../etc/passwd", "class_ids", "batch_size",
                     "image_width", "learning_rate", "meta_data", "seed_rand", "thread_num",
                     "image_label_id", "image"]),
    st.text(max_size=12))
np_scalars = st.sampled_from([np.uint64(2**64 - 1), np.int64(-1), np.float32("nan"),
                              np.float64(1e300), np.bool_(True), np.int8(-128), np.str_("sgd")])
arrays = st.sampled_from([
    np.zeros((32, 32, 3), np.float32), np.zeros((2, 2)), np.array([["a", "b"], ["c", "d"]]),
    np.array([]), np.array(5), np.full((32, 32, 3), np.nan, np.float32),
    np.zeros((32, 32, 3), np.uint64) + np.uint64(2**64 - 1), np.array([1, 2, 3], np.int64),
    np.array([object(), None], dtype=object), np.zeros((1, 1, 1, 1, 1), np.float32),
    np.zeros((32, 32, 3), np.complex64), np.full((32, 32, 3), 3e38, np.float32)])
scalars = st.one_of(huge_ints, odd_floats, odd_text, np_scalars, st.none(), st.booleans(),
                    st.just(b"bytes"), st.just(object()))


def _nested(depth: int):
    o: object = 0
    for _ in range(depth):
        o = [o]
    return o


values = st.recursive(
    st.one_of(scalars, arrays),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                            st.dictionaries(st.one_of(odd_text, huge_ints), inner, max_size=3)),
    max_leaves=6) | st.just(_nested(800))


def samples(label):
    return st.lists(st.fixed_dictionaries(
        {"image": st.one_of(arrays, scalars), "image_label_id": label}), min_size=0, max_size=5)


# --- the objects operators take --------------------------------------------------------------
def new_model():
    warnings.simplefilter("ignore")
    m = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    for k, v in [("image_width", 32), ("image_height", 32), ("class_ids", [0, 1, 2]),
                 ("batch_size", 2)]:
        ha.set_dl_model_param(m, k, v)
    return m


def model_state(m):
    st_ = {n: np.array(m.core.get_param(n), copy=True) for n in m.core.param_names()}
    for k, v in m.core.get_state().items():
        st_["opt/" + k] = np.array(v, copy=True)
    return st_, repr(sorted((k, repr(v)) for k, v in m.params.items()))


def same_state(a, b) -> bool:
    (ta, pa), (tb, pb) = a, b
    return pa == pb and ta.keys() == tb.keys() and all(
        np.array_equal(ta[k], tb[k], equal_nan=True) for k in ta)


def arg_strategy(name: str, tmp: str, handles: dict):
    if name == "file_name":
        leaf = st.one_of(st.sampled_from(["m.hdl", "m.onnx", "x", "a\0b.hdl", "\ud800.hdl",
                                          "dir/", ".", "m"]),
                         st.text(alphabet="abc.\0\udc80 ", max_size=8))
        inside = leaf.map(lambda s: os.path.join(tmp, s.replace("/", "_").replace("..", "_")
                                                 or "f"))
        # zoo names are read, never written; the operators that write get tmp names
        return st.one_of(inside, st.sampled_from(["pretrained_dl_classifier_compact.hdl",
                                                  os.path.join(tmp, "m.hdl")]),
                         st.one_of(huge_ints, odd_floats, st.none(), st.just(b"x")))
    if name.endswith("handle"):
        kind = name.split("_")[0]
        own = handles.get(kind)
        return st.one_of(st.just(own) if own is not None else st.nothing(),
                         st.sampled_from(list(handles.values())), values)
    if name == "dlsample_batch":
        return st.one_of(samples(st.one_of(huge_ints, odd_floats, odd_text, st.none())), values)
    if name == "gen_param_name":
        return st.one_of(st.sampled_from(sorted(dlm._SETTERS)), values)
    return values


OPS = [n for n in ops.OPERATORS]
NON_FILE_WRITERS = {"set_system"}  # global state: restored after each example


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    total = sum(CALLS.values())
    print(f"\nfuzz: {total} calls over {len(CALLS)} operators; conversion-layer fallbacks: "
          f"{dict(FALLBACKS) or 'none'}")


@pytest.mark.parametrize("op_name", OPS)
def test_fuzz_operator(op_name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative name can only land here
    op = getattr(ops, op_name)
    params = list(inspect.signature(op).parameters)
    model = new_model()
    handles = {"dlmodel": model, "dict": ops.create_dict(),
               "dldevice": ops.query_available_dl_devices(["runtime"], ["cpu"])[0]
               if ops.query_available_dl_devices(["runtime"], ["cpu"]) else None}
    handles = {k: v for k, v in handles.items() if v is not None}
    tmp = str(tmp_path)
    system = {q: ha.get_system_s(q) for q in ("seed_rand", "thread_num")}

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.tuples(*[arg_strategy(p, tmp, handles) for p in params]))
    def run(args):
        try:
            before = model_state(model) if any(a is model for a in args) else None
        except Exception:
            before = None  # cleared by an earlier example
        CALLS[op_name] += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                op(*args)
        except HTupleConversionError:
            pass
        except ha.HOperatorError as err:
            cause = err.__cause__
            if cause is not None and not isinstance(cause, ha.HOperatorError) and \
                    err.error_code in (7790, 7791, 6001) and "cannot convert" in err.message \
                    or (cause is not None and "nested too deeply" in err.message):
                FALLBACKS[f"{op_name}:{type(cause).__name__}"] += 1
                if STRICT:
                    raise AssertionError(f"{op_name}{args!r:.300}: conversion fallback "
                                         f"{err}") from err
            if before is not None:
                try:
                    after = model_state(model)
                except Exception:
                    after = before  # the model was cleared by an earlier successful call
                assert same_state(after, before), \
                    f"{op_name}{args!r:.300} raised {err.error_code} but changed the model"
        finally:
            for q, v in system.items():
                ha.set_system(q, v)
        # nothing outside tmp_path: the folder is the cwd, names are generated inside it

    run()
    assert math.isfinite(float(sum(CALLS.values())))
