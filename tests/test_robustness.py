"""Robustness rules of issue 15 (docs/robustness.md): system parameter bounds, divergence,
the conversion layer at the edge, writing onto odd targets, Ctrl-C during a long apply."""
from __future__ import annotations

import os

import numpy as np
import pytest

import halcdl as ha
from halcdl.operators.system import max_thread_num

SIZE, CHANNELS = 32, 3
CLASS_IDS = [0, 1, 2]


def fresh_model(solver="sgd", lr=0.01, bs=2):
    ha.set_system("seed_rand", 11)
    m = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    for name, value in [("image_width", SIZE), ("image_height", SIZE),
                        ("image_num_channels", CHANNELS), ("class_ids", CLASS_IDS),
                        ("batch_size", bs), ("solver_type", solver), ("learning_rate", lr)]:
        ha.set_dl_model_param(m, name, value)
    return m


def samples(seed, n):
    rng = np.random.default_rng(seed)
    return [{"image": rng.uniform(-127, 128, (SIZE, SIZE, CHANNELS)).astype(np.float32),
             "image_label_id": CLASS_IDS[i % len(CLASS_IDS)]} for i in range(n)]


def state_of(m):
    st = {n: np.array(m.core.get_param(n), copy=True) for n in m.core.param_names()}
    for k, v in m.core.get_state().items():
        st["opt/" + k] = np.array(v, copy=True)
    return st


def assert_same(a, b, what):
    assert a.keys() == b.keys()
    bad = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not bad, f"{what}: {bad[:5]} changed"


# --- 0. memory: plans far beyond RAM are refused before the engine allocates -------------
def test_batch_beyond_memory_is_6001_before_planning(monkeypatch):
    from halcdl.operators import dl_model
    m = fresh_model(bs=2)
    data = samples(5, 2)
    ha.train_dl_model_batch(m, data)  # fits
    before = state_of(m)
    # 2 GiB "available": batch 65536 of 32x32 images needs more for its activations alone
    monkeypatch.setattr(dl_model, "_available_memory", lambda: 2 * 2**30)
    ha.set_dl_model_param(m, "batch_size", 65536)
    for call in (lambda: ha.train_dl_model_batch(m, data), lambda: ha.apply_dl_model(m, data, [])):
        with pytest.raises(ha.HOperatorError) as e:
            call()
        assert e.value.error_code == 6001 and "batch_size 65536" in str(e.value)
    assert_same(state_of(m), before, "refused plan")
    # the bound is a lower bound: what fits is not refused
    ha.set_dl_model_param(m, "batch_size", 2)
    ha.apply_dl_model(m, data, [])
    ha.train_dl_model_batch(m, data)


# --- 1. thread_num ----------------------------------------------------------------------
def test_thread_num_bounds():
    before = ha.get_system_s("thread_num")
    hi = max_thread_num()
    assert hi == min(1024, max(16, 4 * (os.cpu_count() or 1)))
    for bad in (0, -1, hi + 1, 100000, 2**31, 2**64, -2**70):
        with pytest.raises(ha.HOperatorError) as info:
            ha.set_system("thread_num", bad)
        assert info.value.error_code == 1302, (bad, info.value)
    for bad in (1.5, "4", float("inf"), None):
        with pytest.raises(ha.HOperatorError) as info:
            ha.set_system("thread_num", bad)
        assert info.value.error_code in (1202, 1402), (bad, info.value)
    assert ha.get_system_s("thread_num") == before
    # the bound itself is usable (no process exit), then back
    ha.set_system("thread_num", hi)
    assert ha.get_system_s("thread_num") == hi
    ha.set_system("thread_num", before)


def test_engine_thread_bound():
    with pytest.raises(ha.HOperatorError) as info:
        ha.operators.system.core.set_num_threads(1025)
    assert info.value.error_code == 7914


# --- 2. divergence and float32-representable parameters -----------------------------------
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_divergence_raises_7720_and_keeps_model(solver, tmp_path):
    m = fresh_model(solver, lr=1e6)
    batches = [samples(1, 2), samples(2, 2)]
    for step in range(12):
        before = state_of(m)
        try:
            ha.train_dl_model_batch(m, batches[step % 2])
        except ha.HOperatorError as err:
            assert err.error_code == 7720, err
            assert_same(state_of(m), before, f"{solver} step {step}")
            break
    else:
        pytest.fail(f"{solver}: 12 steps at learning_rate 1e6 never raised 7720")
    # every committed value is finite (the check ran before each commit)
    for k, v in state_of(m).items():
        assert np.all(np.isfinite(v)), k
    # the model still writes and reads back, bit-identical
    f = tmp_path / "m.hdl"
    ha.write_dl_model(m, str(f))
    m2 = ha.read_dl_model(str(f))
    st2 = state_of(m2)
    for k, v in before.items():
        if not k.startswith("opt/"):
            assert np.array_equal(st2[k], v), k
    # the failing call fails again the same way
    with pytest.raises(ha.HOperatorError) as info:
        ha.train_dl_model_batch(m, batches[step % 2])
    assert info.value.error_code == 7720


def test_divergence_check_benchmark_switch():
    """The benchmark switch (docs/performance.md) is on by default; off, the update is the same
    (bit-identical weights after normal steps) and the check really is skipped (learning rate
    1e6 then commits non-finite values); the op timer times the check and both updates."""
    from halcdl._native import core
    assert core._set_divergence_check(True) is True  # the default
    a, b = fresh_model("sgd"), fresh_model("sgd")
    batches = [samples(1, 2), samples(2, 2)]
    core.reset_op_times()
    core.set_op_timer(True)
    try:
        for step in range(3):
            ha.train_dl_model_batch(a, batches[step % 2])
            assert core._set_divergence_check(False) is True
            ha.train_dl_model_batch(b, batches[step % 2])
            assert core._set_divergence_check(True) is False
        times = core.op_times()
        # lr * (g + weight_prior * w) overflows float32 in the first update; the loss is fine
        d = fresh_model("sgd", lr=3e38)
        ha.set_dl_model_param(d, "weight_prior", 10.0)
        with pytest.raises(ha.HOperatorError) as info:
            ha.train_dl_model_batch(d, batches[0])
        assert info.value.error_code == 7720 and "would not be finite" in info.value.message
        core._set_divergence_check(False)
        ha.train_dl_model_batch(d, batches[0])  # unchecked: commits it
    finally:
        core._set_divergence_check(True)
        core.set_op_timer(False)
        core.reset_op_times()
    assert_same(state_of(b), state_of(a), "check off vs on")
    for k in ("train_step:check", "train_step:update", "train_step:update_unchecked"):
        assert times[k][1] == 3, (k, times.get(k))
    assert not all(np.all(np.isfinite(v)) for v in state_of(d).values())


@pytest.mark.parametrize("name,value", [
    ("learning_rate", 1e300), ("learning_rate", 1e39), ("learning_rate", 10**400),
    ("momentum", float("nan")), ("weight_prior", 1e39), ("adam_epsilon", 1e-300),
    ("adam_epsilon", 1e-40), ("adam_beta1", 10**400), ("image_range_min", 1e39),
    ("image_range_max", float("inf")), ("batch_size", 2**40), ("image_width", 2**40),
    ("image_height", 2**31), ("batch_size_multiplier", 2**40),
    ("image_dimensions", [2**40, 32, 3]),
])
def test_float32_and_int_ranges(name, value):
    m = fresh_model()
    before = ha.get_dl_model_param(m, name)
    with pytest.raises(ha.HOperatorError) as info:
        ha.set_dl_model_param(m, name, value)
    assert info.value.error_code == 1303, info.value
    assert ha.get_dl_model_param(m, name) == before


@pytest.mark.parametrize("weights", [[1e-300, 1.0, 1.0], [1e39, 1, 1], [0, 0, 0], [-1, 1, 1],
                                     [3e38, 3e38, 3e38], [10**400, 1, 1]])
def test_class_weights_float32(weights):
    m = fresh_model()
    with pytest.raises(ha.HOperatorError) as info:
        ha.set_dl_model_param(m, "class_weights", weights)
    assert info.value.error_code == 7791, info.value


@pytest.mark.parametrize("meta", [{"a": float("nan")}, {"a": float("inf")}, {"a": "\udc80"},
                                  {"\ud800": 1}, {"a": 2**70}])
def test_meta_data_values(meta, tmp_path):
    m = fresh_model()
    with pytest.raises(ha.HOperatorError) as info:
        ha.set_dl_model_param(m, "meta_data", meta)
    assert info.value.error_code == 7791, info.value
    ha.write_dl_model(m, str(tmp_path / "ok.hdl"))


# --- 3. the conversion layer ------------------------------------------------------------
@pytest.mark.parametrize("name", ["a\0b.hdl", "\ud800.hdl", b"model.hdl"])
def test_bad_file_names(name, tmp_path):
    m = fresh_model()
    for call in (lambda: ha.read_dl_model(name),
                 lambda: ha.write_dl_model(m, name if isinstance(name, bytes)
                                           else str(tmp_path / name))):
        with pytest.raises(ha.HOperatorError) as info:
            call()
        assert info.value.error_code in (1301, 1302, 1201, 1202), info.value
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("label", [2**70, 2**64 - 1, np.uint64(2**64 - 1), -2**70])
def test_huge_label_ids(label):
    m = fresh_model()
    before = state_of(m)
    batch = samples(4, 2)
    batch[1]["image_label_id"] = label
    with pytest.raises(ha.HOperatorError) as info:
        ha.train_dl_model_batch(m, batch)
    assert info.value.error_code == 7714, info.value
    assert_same(state_of(m), before, "huge label")


@pytest.mark.parametrize("ids", [[0, 1, 2**70], [0, 1, -1], [0, 1, 2**64 - 1]])
def test_huge_class_ids(ids):
    m = fresh_model()
    with pytest.raises(ha.HOperatorError) as info:
        ha.set_dl_model_param(m, "class_ids", ids)
    assert info.value.error_code == 7793, info.value
    assert ha.get_dl_model_param(m, "class_ids") == CLASS_IDS


def test_outputs_2d_array_and_seeds():
    m = fresh_model()
    with pytest.raises(ha.HOperatorError) as info:
        ha.apply_dl_model(m, samples(5, 1), np.array([["a", "b"], ["c", "d"]]))
    assert info.value.error_code == 1203
    for seed in (1e999, float("nan"), "1", None):
        with pytest.raises(ha.HOperatorError):
            ha.set_system("seed_rand", seed)
    ha.set_system("seed_rand", 2**64)  # any integer seeds the stream (mod 2**31)


def test_stray_python_error_becomes_hoperatorerror():
    from halcdl.operators._tuple import operator

    @operator
    def boom(x):
        return {}[x]

    with pytest.raises(ha.HOperatorError) as info:
        boom("k")
    assert info.value.error_code == 7791 and isinstance(info.value.__cause__, KeyError)
    assert info.value.operator == "boom"


# --- 5. writing -------------------------------------------------------------------------
def test_write_through_symlink_and_special_files(tmp_path):
    m = fresh_model()
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link.hdl"
    link.symlink_to(real / "model.hdl")
    ha.write_dl_model(m, str(link))
    assert link.is_symlink() and (real / "model.hdl").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    fifo = tmp_path / "fifo.hdl"
    os.mkfifo(fifo)
    with pytest.raises(ha.HOperatorError) as info:
        ha.write_dl_model(m, str(fifo))
    assert info.value.error_code == 7781
    import stat
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_stale_temporaries_removed(tmp_path):
    import subprocess
    import sys
    import time

    m = fresh_model()
    # a temporary file of a writer that no longer runs (a finished child's pid), old
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                       capture_output=True, text=True, check=True)
    dead = int(p.stdout)
    stale = tmp_path / f".m.hdl.{dead}.0123abcd.tmp"
    stale.write_bytes(b"x" * 100)
    old = time.time() - 60
    os.utime(stale, (old, old))
    mine = tmp_path / f".m.hdl.{os.getpid()}.89abcdef.tmp"  # a live writer's: kept
    mine.write_bytes(b"y")
    os.utime(mine, (old, old))
    other = tmp_path / "notes.tmp"  # not halcdl's naming: kept
    other.write_bytes(b"z")
    os.utime(other, (old, old))
    ha.write_dl_model(m, str(tmp_path / "m.hdl"))
    assert not stale.exists() and mine.exists() and other.exists()


# --- 6. Ctrl-C during a long apply ------------------------------------------------------
_CHILD = r'''
import os, signal, sys, warnings
sys.path.insert(0, sys.argv[1])
warnings.simplefilter("ignore")
import numpy as np
import halcdl as ha
from halcdl.operators import dl_model

ha.set_system("seed_rand", 3)
m = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
for k, v in [("image_width", 32), ("image_height", 32), ("class_ids", [0, 1, 2]),
             ("batch_size", 4)]:
    ha.set_dl_model_param(m, k, v)
rng = np.random.default_rng(0)
img = rng.uniform(-127, 128, (32, 32, 3)).astype(np.float32)
converted = []

class Image:
    """An image that counts its conversions; the first one sends SIGINT to this process."""
    def __array__(self, dtype=None, copy=None):
        converted.append(1)
        if len(converted) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return img if dtype is None else img.astype(dtype)

n = 20 * dl_model.APPLY_CHUNK_SAMPLES
ref = ha.apply_dl_model(m, [{"image": img}] * 8, [])
try:
    ha.apply_dl_model(m, [{"image": Image()} for _ in range(n)], [])
    print("NO_INTERRUPT", len(converted))
except KeyboardInterrupt:
    print("INTERRUPTED", len(converted), n)


class Core:
    """The engine model, with a SIGINT arriving while its first infer call runs (the
    signal is handled when the call returns to Python, as for a real Ctrl-C)."""
    def __init__(self, core):
        self._core, self.calls = core, []
    def __getattr__(self, name):
        return getattr(self._core, name)
    def infer(self, samples, *a):
        self.calls.append(len(samples))
        r = self._core.infer(samples, *a)
        if len(self.calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return r

real = m.core
m.core = Core(real)
try:
    ha.apply_dl_model(m, [{"image": img}] * n, [])
    print("NO_INTERRUPT2")
except KeyboardInterrupt:
    print("INTERRUPTED2", sum(m.core.calls), n)
m.core = real
again = ha.apply_dl_model(m, [{"image": img}] * 8, [])
print("CONSISTENT", all(a["classification_confidences"] == b["classification_confidences"]
                        for a, b in zip(ref, again)))
'''


def test_ctrl_c_interrupts_long_apply_within_one_chunk(tmp_path):
    import subprocess
    import sys

    from halcdl.operators import dl_model

    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    from helpers import halcdl_path
    pkg = halcdl_path()  # the halcdl under test (site-packages in CI, python/ built in place)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, str(script), pkg], capture_output=True, text=True,
                       timeout=300, env=env)
    out = p.stdout.split()
    assert p.returncode == 0 and "INTERRUPTED" in out, (p.stdout, p.stderr[-2000:])
    i = out.index("INTERRUPTED")
    converted = int(out[i + 1])
    # the interrupt is seen after the first chunk: its samples were converted, no more
    chunk = -(-dl_model.APPLY_CHUNK_SAMPLES // 4) * 4
    assert converted <= chunk, (converted, chunk)
    # a SIGINT during the engine's computation: KeyboardInterrupt after that one chunk
    assert "INTERRUPTED2" in out, p.stdout
    done = int(out[out.index("INTERRUPTED2") + 1])
    assert done == chunk, (done, chunk)
    assert out[out.index("CONSISTENT") + 1] == "True"
