"""Fuzzing HALCON's workflow procedures (every public name of halcdl.workflow.__all__) with
hypothesis, as tests/test_fuzz.py does the operators.

Each example starts from valid arguments for the procedure (a small classification dataset
of real PNG files, a segmentation dataset, a COCO file, samples, preprocess / train / gen
parameter dicts, a model at 16x16) and then either leaves them valid, replaces one argument
by a hostile value (test_fuzz's values: huge/negative ints, NaN/Inf, odd strings, arrays of
odd dtypes/shapes, deep nesting, foreign objects), replaces one entry of one dict argument
(or of one of its samples) by such a value, removes one entry, or adds an unknown one.

Rules (docs/robustness.md): a procedure returns or raises HOperatorError /
HTupleConversionError, nothing else; when it raises, the dicts / lists it was given (the
dataset, samples, parameter dicts) and the model are as they were.  Conversion-layer
fallbacks (a stray Python exception wrapped by @operator: 7790/7791/6001 with a non-HALCON
__cause__) are counted and printed; HALCDL_FUZZ_STRICT=1 makes them fail.  Everything is read
and written inside the test's temporary folders (the working directory is one).  Fixed seed
(derandomize), bounded examples: HALCDL_FUZZ_EXAMPLES per procedure (default 8 in CI).
"""
from __future__ import annotations

import collections
import copy
import inspect
import json
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import halcdl as ha
import halcdl.workflow as wf
from halcdl.errors import HTupleConversionError
from halcdl.models.handle import DLModel

from test_fuzz import _nested, huge_ints, model_state, odd_floats, odd_text, same_state, values

EXAMPLES = int(os.environ.get("HALCDL_FUZZ_EXAMPLES", "8"))
STRICT = os.environ.get("HALCDL_FUZZ_STRICT") == "1"
CALLS: collections.Counter = collections.Counter()
OUTCOMES: collections.Counter = collections.Counter()
FALLBACKS: collections.Counter = collections.Counter()

HOSTILE = st.one_of(values, huge_ints, odd_floats, odd_text)
_REMOVE = object()
_SIZE = 16

# procedures that train (tens of steps per successful example): fewer examples, marked slow
SLOW = {"train_dl_model", "start_train_dl_model", "TrainingQueue", "optimize_dl_model_batch_size",
        "evaluate_dl_model", "preprocess_dl_dataset"}


# --- the world: small valid objects of every kind ------------------------------------------
def _png(path: str, arr: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


def _build_world(root: str) -> dict:
    rng = np.random.default_rng(0)
    folder = os.path.join(root, "images")
    for c in ("a", "b"):
        for i in range(3):
            _png(os.path.join(folder, c, f"{c}{i}.png"),
                 rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
    seg_img, seg_lbl = os.path.join(root, "seg_img"), os.path.join(root, "seg_lbl")
    for i in range(3):
        _png(os.path.join(seg_img, f"s{i}.png"), rng.integers(0, 255, (12, 12), dtype=np.uint8))
        _png(os.path.join(seg_lbl, f"s{i}.png"), rng.integers(0, 2, (12, 12), dtype=np.uint8))
    coco_dir = os.path.join(root, "coco")
    for i in range(2):
        _png(os.path.join(coco_dir, f"c{i}.png"), rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    coco = {"images": [{"id": i + 1, "file_name": f"c{i}.png", "width": 32, "height": 32}
                       for i in range(2)],
            "categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 12],
                             "iscrowd": 0},
                            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [5, 5, 20, 8],
                             "iscrowd": 0}]}
    coco_file = os.path.join(root, "coco.json")
    with open(coco_file, "w") as fh:
        json.dump(coco, fh)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = ha.read_dl_dataset_classification(folder, "last_folder")
        ha.split_dl_dataset(ds, 50, 25, [])
        seg = ha.read_dl_dataset_segmentation(seg_img, seg_lbl, ["bg", "fg"], [0, 1], [], [], [])
        ha.split_dl_dataset(seg, 50, 25, [])
        det = ha.read_dl_dataset_from_coco(coco_file, coco_dir, [])
        model = new_model()
        pp = ha.create_dl_preprocess_param_from_model(model, "none", "full_domain", [], [], [])
        prep_dir = os.path.join(root, "prep")
        ha.preprocess_dl_dataset(ds, prep_dir, pp, {"overwrite_files": "true",
                                                     "show_progress": "false"})
        tp = ha.create_dl_train_param(model, 1, 1, "false", 1, [], [])
        raw = ha.read_dl_samples(ds, [0, 1])
        prepped = copy.deepcopy(raw)
        ha.preprocess_dl_samples(prepped, pp)
        seg_pp = ha.create_dl_preprocess_param("segmentation", 12, 12, 1, -127, 128, "none",
                                               "full_domain", [], [], [], [])
        ha.preprocess_dl_dataset(seg, os.path.join(root, "seg_prep"), seg_pp,
                                 {"overwrite_files": "true", "show_progress": "false"})
    return {"root": root, "folder": folder, "ds": ds, "seg": seg, "det": det, "pp": pp,
            "seg_pp": seg_pp, "tp": tp, "raw": raw, "prepped": prepped, "prep": prep_dir,
            "seg_img": seg_img, "seg_lbl": seg_lbl, "coco_file": coco_file,
            "coco_dir": coco_dir}


def new_model() -> DLModel:
    warnings.simplefilter("ignore")
    m = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    for k, v in [("image_width", _SIZE), ("image_height", _SIZE), ("class_ids", [0, 1]),
                 ("batch_size", 2)]:
        ha.set_dl_model_param(m, k, v)
    return m


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return _build_world(str(tmp_path_factory.mktemp("fuzzwf")))


# --- valid arguments per parameter name ------------------------------------------------------
def valid_args(proc: str, params: list, w: dict, model: DLModel, tmp: str) -> list:
    """One valid argument list for ``proc`` (copies: the world is never handed out)."""
    seg_procs = {"calculate_dl_segmentation_class_weights", "gen_dl_segmentation_weight_images"}
    ds = w["seg"] if proc in seg_procs else w["det"] if proc == \
        "determine_dl_model_detection_param" else w["ds"]
    table = {
        "dldataset": ds, "dlmodel_handle": model, "dlmodel": model,
        "dlsample_batch": w["prepped"], "samples": w["raw"], "images": [np.zeros((8, 8, 3),
                                                                                 np.uint8)],
        "dlpreprocess_param": w["seg_pp"] if proc in seg_procs else w["pp"],
        "train_param": w["tp"], "start_epoch": 0,
        "num_epochs": 1, "evaluation_interval_epochs": 1, "enable_display": "false",
        "random_seed": 1, "gen_param_name": [], "gen_param_value": [],
        "image_width_target": 64, "image_height_target": 64,
        "sample_select_method": "split", "sample_select_values": "validation",
        "training_percent": 50, "validation_percent": 25, "key_name": "split",
        "key_value": "train", "sample_indices": [0, 1], "restrict_keys_dlsample": "classification",
        "raw_image_folder": w["folder"], "label_source": "last_folder",
        "image_dir": w["coco_dir"] if proc == "read_dl_dataset_from_coco" else w["seg_img"],
        "segmentation_dir": w["seg_lbl"], "class_names": ["bg", "fg"], "class_ids": [0, 1],
        "image_list": [], "segmentation_list": [], "coco_file_name": w["coco_file"],
        "dl_model_type": "classification", "image_width": _SIZE, "image_height": _SIZE,
        "image_num_channels": 3, "image_range_min": -127, "image_range_max": 128,
        "normalization_type": "none", "domain_handling": "full_domain",
        "ignore_class_ids": [], "set_background_id": [], "class_ids_background": [],
        "max_weight": 1000, "class_weights": [1.0, 2.0], "batch_size_upper_bound": 2,
        "data_directory": os.path.join(tmp, "prep_out"), "timeout": -1, "wait": True,
    }
    gen = {
        "augment_dl_samples": {"augmentation_percentage": 100, "mirror": "rc", "seed": 3},
        "optimize_dl_model_batch_size": {"max_batch_size": 2, "num_iterations": 1,
                                         "warmup_iterations": 0},
        "preprocess_dl_dataset": {"overwrite_files": "true", "show_progress": "false"},
        "evaluate_dl_model": {"measures": ["top1_error"]},
        "split_dl_dataset": {"overwrite_split": "true"},
    }
    mode = {"find_dl_samples": "match", "optimize_dl_model_batch_size": "training"}
    out = []
    for p in params:
        if p == "gen_param":
            v = gen.get(proc, [])
        elif p == "mode":
            v = mode.get(proc, "match")
        else:
            v = table[p]
        out.append(v if isinstance(v, DLModel) else copy.deepcopy(v))
    return out


# --- hostile variants --------------------------------------------------------------------------
def _slots(o) -> list:
    """Every (container, key) inside ``o`` (dicts and lists, nested; arrays are leaves), in a
    deterministic order."""
    out, stack = [], [o]
    while stack:
        c = stack.pop()
        keys = sorted(c, key=repr) if isinstance(c, dict) else range(len(c))
        for k in keys:
            out.append((c, k))
            if isinstance(c[k], (dict, list)) and len(out) < 500:
                stack.append(c[k])
    return out


def mutate_entry(obj, changes: list):
    """A copy of ``obj`` (a dict or list, nested) with entries replaced: each change
    (hostile value, slot index, action) replaces the slot's value (action 0), removes the
    entry (1) or adds an entry under an unknown key to the slot's container (2)."""
    o = copy.deepcopy(obj)
    for hostile, index, action in changes:
        slots = _slots(o)
        if not slots:
            return o
        c, k = slots[index % len(slots)]
        if action == 1:
            del c[k]
        elif action == 2:
            if isinstance(c, dict):
                c[f"zz_unknown_{index}"] = hostile
            else:
                c.append(hostile)
        else:
            c[k] = hostile
    return o


PATH_PARAMS = ("raw_image_folder", "image_dir", "segmentation_dir", "data_directory",
               "coco_file_name")


def inside(v, tmp: str):
    """``v`` with every string in it (top level or in a list / tuple / dict value) made a name
    inside ``tmp``: a hostile folder argument never names '/' or '..' (a recursive listing of
    the file system, or a write outside the test's folder)."""
    if isinstance(v, str):
        return os.path.join(tmp, v.replace("/", "_").replace("..", "_") or "e")
    if isinstance(v, (list, tuple)):
        return type(v)(inside(x, tmp) for x in v)
    if isinstance(v, dict):
        return {k: inside(x, tmp) for k, x in v.items()}
    if isinstance(v, np.ndarray) and v.dtype.kind == "U":
        return np.array([inside(str(x), tmp) for x in v.reshape(-1)]).reshape(v.shape)
    return v


def _safe_inside(v, tmp: str):
    try:
        return inside(v, tmp)
    except RecursionError:  # the 800-deep list: no string in it
        return v


def hostile_for(name: str, valid, tmp: str):
    """Strategies for a hostile value of the argument ``name`` whose valid value is ``valid``."""
    if name in PATH_PARAMS:
        return st.one_of(HOSTILE.map(lambda v: _safe_inside(v, tmp)), st.sampled_from(
            [os.path.join(tmp, "missing"), os.path.join(tmp, "a\0b"), os.path.join(tmp, "\ud800"),
             tmp, os.path.join(tmp, "f.png"), valid]))
    strategies = [HOSTILE]
    if isinstance(valid, (dict, list)) and valid and not isinstance(valid, DLModel):
        change = st.tuples(HOSTILE, st.integers(0, 400), st.sampled_from([0, 0, 0, 1, 2]))
        strategies.append(st.builds(mutate_entry, st.just(valid),
                                    st.lists(change, min_size=1, max_size=2)))
    if name in ("dlsample_batch", "samples", "images"):
        strategies.append(st.lists(st.fixed_dictionaries({"image": st.sampled_from(
            [np.zeros((16, 16, 3), np.float32), np.full((16, 16, 3), np.nan, np.float32),
             np.zeros((0, 4, 3), np.float32), np.zeros((16, 16), np.uint8),
             np.zeros((16, 16, 3), np.complex64), np.zeros((2, 2, 2, 2), np.float32)])}),
            max_size=3))
    return st.one_of(*strategies)


def snapshot(x):
    """A deep copy that compares by value; None for values too deeply nested to copy."""
    try:
        return copy.deepcopy(x)
    except RecursionError:
        return None


def _same_leaf(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and \
            a.dtype == b.dtype and a.shape == b.shape and \
            (a.dtype == object or np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, (float, np.floating)) and isinstance(b, (float, np.floating)) and \
            a != a and b != b:
        return type(a) is type(b)
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # objects without a usable ==: identity
        return a is b


def same(a, b) -> bool:
    """Deep equality by value, iterative (no recursion limit); deepcopied foreign objects
    (object()) compare by type."""
    stack, seen = [(a, b)], set()
    while stack:
        x, y = stack.pop()
        if isinstance(x, (dict, list)):  # shared (or cyclic) containers: compared once
            if (id(x), id(y)) in seen:
                continue
            seen.add((id(x), id(y)))
        if isinstance(x, dict) or isinstance(y, dict):
            if not (isinstance(x, dict) and isinstance(y, dict)) or list(x) != list(y):
                return False
            stack.extend((x[k], y[k]) for k in x)
        elif isinstance(x, (list, tuple)) or isinstance(y, (list, tuple)):
            if type(x) is not type(y) or len(x) != len(y):
                return False
            stack.extend(zip(x, y))
        elif type(x) is object and type(y) is object:
            continue
        elif not _same_leaf(x, y):
            return False
    return True


# --- the procedures ---------------------------------------------------------------------------
def _queue_submit(dldataset, dlmodel_handle, train_param, start_epoch):
    q = wf.TrainingQueue()
    job = q.submit(dldataset, dlmodel_handle, train_param, start_epoch)
    q.wait_all(60)
    return job.result(60)


def _start_and_wait(dldataset, dlmodel_handle, train_param, start_epoch):
    job = wf.start_train_dl_model(dldataset, dlmodel_handle, train_param, start_epoch)
    job.wait_for_training_completion(60)
    return job.result(60)


def _job_methods(timeout, wait):
    """A finished TrainingJob's methods with hostile timeouts / wait flags (made by the test
    from valid arguments, so only these two arguments are fuzzed)."""
    job = _JOB[0]
    job.wait_for_training_completion(timeout)
    job.stop_training(wait)
    job.result(timeout)


_JOB: list = []


def callables() -> dict:
    """name -> (function, parameter names): every public name of workflow.__all__; the two
    classes through their public entry points."""
    out = {}
    for n in wf.__all__:
        obj = getattr(wf, n)
        if inspect.isfunction(obj):
            out[n] = obj
    out["start_train_dl_model"] = _start_and_wait  # and wait for the job (errors surface there)
    out["TrainingQueue"] = _queue_submit
    out["TrainingJob"] = _job_methods
    assert set(out) == set(wf.__all__), set(wf.__all__) ^ set(out)
    return out


PROCS = callables()


def _params(fn) -> list:
    return list(inspect.signature(fn).parameters)


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print(f"\nworkflow fuzz: {sum(CALLS.values())} calls over {len(CALLS)} procedures; "
          f"outcomes {dict(sorted(OUTCOMES.items(), key=str))}; conversion-layer fallbacks: "
          f"{dict(FALLBACKS) or 'none'}")


def _fuzz(proc: str, world: dict, tmp_path, examples: int) -> None:
    fn = PROCS[proc]
    params = _params(fn)
    tmp = str(tmp_path)
    model = new_model()
    if proc == "TrainingJob":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tp = copy.deepcopy(world["tp"])
            _JOB[:] = [wf.start_train_dl_model(copy.deepcopy(world["ds"]), model, tp, 0)]
            _JOB[0].wait_for_training_completion(60)
    system = {q: ha.get_system_s(q) for q in ("seed_rand", "thread_num")}
    base = valid_args(proc, params, world, model, tmp) if proc != "TrainingJob" else [-1, True]
    per_arg = [hostile_for(p, v, tmp) for p, v in zip(params, base)]

    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.integers(-2, len(params) - 1), st.tuples(*per_arg))
    def run(which, hostile):
        # which = -1: all arguments valid; -2: all hostile; else argument `which` is hostile
        args = [snapshot(v) if isinstance(v, (dict, list)) else v for v in base]
        for i, h in enumerate(hostile):
            if which in (i, -2):
                args[i] = snapshot(h) if isinstance(h, (dict, list)) and \
                    snapshot(h) is not None else h
        models = [a for a in args if isinstance(a, DLModel)]
        before_models = [model_state(m) for m in models]
        mutable = [a for a in args if isinstance(a, (dict, list))]
        before = [snapshot(a) for a in mutable]
        CALLS[proc] += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn(*args)
            OUTCOMES["ok"] += 1
        except HTupleConversionError:
            OUTCOMES["HTupleConversionError"] += 1
        except ha.HOperatorError as err:
            OUTCOMES[err.error_code] += 1
            cause = err.__cause__
            if cause is not None and not isinstance(cause, ha.HOperatorError) and \
                    err.error_code in (7790, 7791, 6001):
                FALLBACKS[f"{proc}:{type(cause).__name__}"] += 1
                if STRICT:
                    raise AssertionError(f"{proc}{args!r:.300}: conversion fallback {err}") \
                        from err
            for m, b in zip(models, before_models):
                assert same_state(model_state(m), b), \
                    f"{proc}{args!r:.300} raised {err.error_code} but changed the model"
            for a, b in zip(mutable, before):
                assert b is None or same(a, b), \
                    f"{proc}{args!r:.300} raised {err.error_code} but changed its argument " \
                    f"{b!r:.200}"
        finally:
            for q, v in system.items():
                ha.set_system(q, v)

    run()


FAST = [p for p in PROCS if p not in SLOW]


@pytest.mark.parametrize("proc", FAST)
def test_fuzz_procedure(proc, world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative name (serialization, ...) can only land here
    _fuzz(proc, world, tmp_path, EXAMPLES)


@pytest.mark.slow
@pytest.mark.parametrize("proc", sorted(SLOW))
def test_fuzz_training_procedure(proc, world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fuzz(proc, world, tmp_path, max(2, EXAMPLES // 2))


# --- a deterministic sweep: each entry of each argument, replaced by each of a few values -----
SWEEP_VALUES = [_nested(800), [[1, 2], [3]], np.array([object(), None], dtype=object),
                np.zeros((2, 2)), float("nan"), 2**70, 10**60, "\ud800", object(), {"a": 1},
                np.array(5), None, True, ""]
SWEEP_SLOTS = int(os.environ.get("HALCDL_FUZZ_SWEEP_SLOTS", "25"))


def _sweep(proc: str, world: dict, tmp_path) -> int:
    """Every argument replaced by each SWEEP_VALUE, and every slot (up to SWEEP_SLOTS) of each
    dict / list argument replaced by each of them, removed, or joined by an unknown key: the
    same rules as _fuzz. Hypothesis samples this space; the sweep covers it."""
    fn = PROCS[proc]
    params = _params(fn)
    tmp = str(tmp_path)
    model = new_model()
    base = valid_args(proc, params, world, model, tmp)
    n = 0
    for ai, v0 in enumerate(base):
        vals = [_safe_inside(h, tmp) for h in SWEEP_VALUES] if params[ai] in PATH_PARAMS \
            else SWEEP_VALUES
        cands = [(None, h) for h in vals]
        if isinstance(v0, (dict, list)):
            slots = min(len(_slots(copy.deepcopy(v0))), SWEEP_SLOTS)
            cands += [((k, a), h) for k in range(slots) for a in (0, 1, 2)
                      for h in (vals if a != 1 else vals[:1])]
        for slot, h in cands:
            args = [copy.deepcopy(v) if isinstance(v, (dict, list)) else v for v in base]
            args[ai] = h if slot is None else mutate_entry(base[ai], [(h, slot[0], slot[1])])
            before = [snapshot(a) for a in args if isinstance(a, (dict, list))]
            state = model_state(model)
            n += 1
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    fn(*args)
            except HTupleConversionError:
                pass
            except ha.HOperatorError as err:
                cause = err.__cause__
                assert not (cause is not None and not isinstance(cause, ha.HOperatorError) and
                            err.error_code in (7790, 7791, 6001)), \
                    f"{proc} argument {ai} slot {slot} = {h!r:.80}: conversion fallback {err}"
                assert same_state(model_state(model), state), \
                    f"{proc} argument {ai} slot {slot} = {h!r:.80}: {err.error_code} changed the model"
                after = [a for a in args if isinstance(a, (dict, list))]
                for a, b in zip(after, before):
                    assert b is None or same(a, b), \
                        f"{proc} argument {ai} slot {slot} = {h!r:.80}: {err.error_code} changed " \
                        f"an argument"
    return n


@pytest.mark.slow
@pytest.mark.parametrize("proc", [p for p in FAST if p != "TrainingJob"])
def test_sweep_procedure(proc, world, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    CALLS[f"sweep:{proc}"] += _sweep(proc, world, tmp_path)
