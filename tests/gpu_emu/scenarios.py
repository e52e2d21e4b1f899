"""Scenarios for the emulated GPU backend that tests/test_gpu.py does not cover, run one per
process by tests/test_gpu_emulated.py (a process can load only one CUDA backend, and the
memory limit / driver switch of fake_cudart.cpp are read from the environment):

    HALCDL_CUDA_LIBRARY=<libhalcdl_cuda_emu.so> python tests/gpu_emu/scenarios.py NAME

Each scenario raises (exit status 1, traceback on stderr) or prints "OK NAME".

  warm_step_no_malloc   a warm train step, and a warm inference, call cudaMalloc 0 times; a
                        deleted model leaves no device memory behind
  no_driver             HALCDL_EMU_NO_DRIVER=1: runtime 'gpu' → 7709, the model stays on the
                        CPU, no GPU is listed
  upload_oom            a GPU smaller than the model (HALCDL_EMU_GPU_MEMORY tiny): moving it
                        there → 6021, the model stays on the CPU and still trains; nothing leaks
  malloc_fault_sweep    each cudaMalloc of a move to the GPU and of the cold train steps fails
                        in turn: 6021, nothing changes, and the retried run is bitwise the same
  reconfigure_and_move  GPU vs CPU across a new batch size, optimize_for_inference, a switched
                        cudnn_deterministic, a new image size, GPU → CPU → GPU (SGD, Adam)
  two_threads           two GPU models trained from two threads at once: bitwise as sequential
  nonfinite_step        weights blown up: 7720 at the same step as the CPU, nothing changes
                        (with HALCDL_CUDA_DEBUG=2: the message names the node)
  batch_size_search     optimize_dl_model_batch_size (training, inference) and
                        set_dl_model_param_max_gpu_batch_size on a small GPU
                        (HALCDL_EMU_GPU_MEMORY=96M) without CuPy: the bound is 80 % of the free
                        memory with the scratch copy on the GPU, it bites, the search holds one
                        candidate's plan at a time, the chosen size trains, nothing leaks
  train_sequence_sgd    test_gpu.py's train-sequence comparison (5 steps, GPU vs CPU: losses,
  train_sequence_adam   weights, optimizer state, confidences) at a learning rate where the run
                        is well conditioned (see test_gpu_emulated.py for why not 0.01)
"""
from __future__ import annotations

import ctypes
import gc
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

import numpy as np  # noqa: E402

import halcdl as ha  # noqa: E402
from halcdl._native import core, ensure_cuda  # noqa: E402
from helpers import assert_close, make_samples  # noqa: E402

SIZE, BATCH, MULT, CLASS_IDS = 48, 4, 2, [0, 1, 2]


def fake_runtime() -> ctypes.CDLL:
    """The fake CUDA runtime's test hooks, in the backend _core has loaded (RTLD_NOLOAD: the
    very library instance, not a second copy)."""
    ensure_cuda()
    lib = ctypes.CDLL(os.environ["HALCDL_CUDA_LIBRARY"], mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    for f in ("fake_cudart_malloc_count", "fake_cudart_live_bytes", "fake_cudart_live_allocations"):
        getattr(lib, f).restype = ctypes.c_ulonglong
    return lib


def model(runtime: str, solver: str = "sgd", name: str = "pretrained_dl_classifier_compact.hdl", lr=None):
    ha.set_system("seed_rand", 5)
    m = ha.read_dl_model(name)
    for k, v in [("image_dimensions", [SIZE, SIZE, 3]), ("class_ids", CLASS_IDS),
                 ("class_weights", [1.0, 2.5, 0.5]), ("batch_size", BATCH),
                 ("batch_size_multiplier", MULT),
                 ("learning_rate", lr if lr is not None else (0.01 if solver == "sgd" else 1e-3)),
                 ("momentum", 0.9), ("weight_prior", 1e-3), ("solver_type", solver),
                 ("runtime", runtime)]:
        ha.set_dl_model_param(m, k, v)
    return m


def batches(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [make_samples(BATCH * MULT, SIZE, SIZE, 3, CLASS_IDS, rng) for _ in range(n)]


def params(m) -> dict:
    return {n: np.asarray(m.core.get_param(n)) for n in m.core.param_names()}


def expect_error(code: int, fn) -> ha.HOperatorError:
    try:
        fn()
    except ha.HOperatorError as e:
        assert e.error_code == code, f"expected HALCON error {code}, got {e.error_code}: {e}"
        return e
    raise AssertionError(f"expected HALCON error {code}, nothing was raised")


# ---------------------------------------------------------------------------------------------
def warm_step_no_malloc() -> None:
    lib = fake_runtime()
    assert lib.fake_cudart_live_allocations() == 0
    for solver in ("sgd", "adam"):
        m = model("gpu", solver)
        bs = batches(5, seed=1)
        cold = lib.fake_cudart_malloc_count()
        for b in bs[:2]:  # cold: plans, arenas, staging and scratch buffers are allocated here
            ha.train_dl_model_batch(m, b)
        before = lib.fake_cudart_malloc_count()
        assert before > cold, "the malloc counter did not see the cold steps' allocations"
        for b in bs[2:]:
            ha.train_dl_model_batch(m, b)
        n = lib.fake_cudart_malloc_count() - before
        assert n == 0, f"{solver}: {n} cudaMalloc call(s) in 3 warm train steps"
        test = make_samples(BATCH, SIZE, SIZE, 3, CLASS_IDS, np.random.default_rng(2))
        ha.apply_dl_model(m, test, [])
        before = lib.fake_cudart_malloc_count()
        for _ in range(2):
            ha.apply_dl_model(m, test, [])
        n = lib.fake_cudart_malloc_count() - before
        assert n == 0, f"{solver}: {n} cudaMalloc call(s) in 2 warm inferences"
        assert lib.fake_cudart_live_allocations() > 0
        del m
        gc.collect()
        left = lib.fake_cudart_live_allocations()
        assert left == 0, (f"{solver}: the deleted model left {left} device allocations "
                           f"({lib.fake_cudart_live_bytes()} bytes)")


def no_driver() -> None:
    assert os.environ.get("HALCDL_EMU_NO_DRIVER") == "1"
    m = model("cpu")
    before = params(m)
    e = expect_error(7709, lambda: ha.set_dl_model_param(m, "runtime", "gpu"))
    assert "driver" in str(e), e
    assert ha.get_dl_model_param(m, "runtime") == ["cpu"]
    assert ha.query_available_dl_devices(["runtime"], ["gpu"]) == []
    ha.train_dl_model_batch(m, batches(1)[0])  # still trains, on the CPU
    after = params(m)
    assert any(not np.array_equal(before[n], after[n]) for n in before)


def upload_oom() -> None:
    lib = fake_runtime()
    total = core.gpu_device_info(0)["total_bytes"]
    m = model("cpu", name="pretrained_dl_classifier_resnet18.hdl")
    p0 = params(m)
    nbytes = 4 * sum(v.size for v in p0.values())
    assert nbytes > total, f"the scenario needs a GPU smaller than the model ({nbytes} > {total})"
    e = expect_error(6021, lambda: ha.set_dl_model_param(m, "runtime", "gpu"))
    assert "out of memory" in str(e).lower(), e
    assert ha.get_dl_model_param(m, "runtime") == ["cpu"]
    gc.collect()
    assert lib.fake_cudart_live_allocations() == 0, "a failed move to the GPU left device memory behind"
    p1 = params(m)
    assert all(np.array_equal(p0[n], p1[n]) for n in p0)
    ha.train_dl_model_batch(m, batches(1)[0])


def malloc_fault_sweep() -> None:
    """Every cudaMalloc of moving a model to the GPU, and of its first (cold) train steps, fails
    in turn (fake_cudart_fail_malloc_after): each must raise 6021 and change nothing — the model
    stays where it was with the same weights, and once memory is back it trains to the very same
    (bitwise) weights and optimizer state as a run without faults. (A fault in building a plan
    may be absorbed: the engine frees its other plans and retries once; the run must then be
    the same too.)"""
    lib = fake_runtime()
    lib.fake_cudart_fail_malloc_after.argtypes = [ctypes.c_longlong]
    lib.fake_cudart_fail_malloc_after.restype = ctypes.c_longlong
    ha.set_system("cudnn_deterministic", "true")
    bs = batches(2, seed=4)

    def run(m):
        for b in bs:
            ha.train_dl_model_batch(m, b)
        return params(m), m.core.get_state()

    def same(got, want, what):
        (pg, sg), (pw, sw) = got, want
        bad = [n for n in pw if not np.array_equal(pg[n], pw[n])]
        bad += [k for k in ("m1", "m2") if not np.array_equal(np.asarray(sg[k]), np.asarray(sw[k]))]
        assert not bad and sg["steps"] == sw["steps"], f"{what}: differs from the run without faults in {bad[:5]}"

    m = model("cpu", "adam")
    c0 = lib.fake_cudart_malloc_count()
    ha.set_dl_model_param(m, "runtime", "gpu")
    c1 = lib.fake_cudart_malloc_count()
    ref = run(m)
    c2 = lib.fake_cudart_malloc_count()
    n_place, n_steps = c1 - c0, c2 - c1
    assert n_place > 0 and n_steps > 0
    del m
    for k in range(n_place):  # the k-th allocation of the move fails
        m = model("cpu", "adam")
        p0 = params(m)
        lib.fake_cudart_fail_malloc_after(k)
        try:
            expect_error(6021, lambda: ha.set_dl_model_param(m, "runtime", "gpu"))
        finally:
            lib.fake_cudart_fail_malloc_after(-1)
        assert ha.get_dl_model_param(m, "runtime") == ["cpu"], f"move, fault {k}: the model left the CPU"
        p1 = params(m)
        assert all(np.array_equal(p0[n], p1[n]) for n in p0), f"move, fault {k}: the weights changed"
        ha.set_dl_model_param(m, "runtime", "gpu")
        same(run(m), ref, f"move, fault {k}")
        del m
    absorbed = 0
    for k in range(n_steps):  # the k-th allocation of the cold train steps fails
        m = model("cpu", "adam")
        ha.set_dl_model_param(m, "runtime", "gpu")
        p0, s0 = params(m), m.core.get_state()
        lib.fake_cudart_fail_malloc_after(k)
        try:
            got = None
            try:
                got = run(m)  # the fault may hit the first or the second step
            except ha.HOperatorError as e:
                assert e.error_code == 6021, f"train, fault {k}: {e}"
        finally:
            lib.fake_cudart_fail_malloc_after(-1)
        if got is not None:  # absorbed: the engine retries a plan after freeing the others
            same(got, ref, f"train, fault {k} (absorbed)")
            absorbed += 1
            del m
            continue
        steps = m.core.get_state()["steps"]
        if steps == 0:  # the first step failed: nothing may have changed
            p1 = params(m)
            assert all(np.array_equal(p0[n], p1[n]) for n in p0), f"train, fault {k}: the weights changed"
            same(run(m), ref, f"train, fault {k}, retried")
        else:  # the second one failed: retry it alone
            assert steps == 1, steps
            ha.train_dl_model_batch(m, bs[1])
            same((params(m), m.core.get_state()), ref, f"train, fault {k} in step 2, retried")
        del m
    assert absorbed < n_steps, "no injected fault reached the caller"
    gc.collect()
    assert lib.fake_cudart_live_allocations() == 0


def _train_sequence(solver: str, lr: float) -> None:
    ha.set_system("tf32", "false")
    cpu, gpu = model("cpu", solver, lr=lr), model("gpu", solver, lr=lr)
    for i, b in enumerate(batches(5)):
        lc = ha.train_dl_model_batch(cpu, b)["total_loss"]
        lg = ha.train_dl_model_batch(gpu, b)["total_loss"]
        assert_close(np.ravel(lg), np.ravel(lc), atol=1e-5, rtol=1e-4, what=f"step {i} total_loss")
    pc, pg = params(cpu), params(gpu)
    for n in pc:
        assert_close(pg[n], pc[n], atol=1e-4, rtol=1e-3, what=f"{solver} {n}")
    sc, sg = cpu.core.get_state(), gpu.core.get_state()
    # The optimizer state is the (decayed) sum of the raw gradients, which a float32 ReLU kink
    # moves by a lot in the one channel where an input within rounding of 0 lands on the other
    # side on the two backends (docs/testing.md, "golden tests on AVX2"); the weights above
    # (Adam moves each by at most lr per step) and the losses stay elementwise. So the state is
    # compared as a whole: its relative (Frobenius) distance, and elementwise on all but 10 %.
    for k in ("m1", "m2") if solver == "adam" else ("m1",):
        a, e = np.asarray(sg[k], np.float64), np.asarray(sc[k], np.float64)
        rel = float(np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-30))
        bad = float(np.mean(np.abs(a - e) > 1e-4 + 1e-3 * np.abs(e)))
        print(f"optimizer state {k}: relative distance {rel:.2e}, {bad:.2%} elements off", file=sys.stderr)
        assert rel <= 2e-2 and bad <= 0.10, f"optimizer state {k}: relative distance {rel:.2e}, {bad:.2%} off"
    assert sg["steps"] == sc["steps"] == 5
    test = make_samples(5, SIZE, SIZE, 3, CLASS_IDS, np.random.default_rng(9))
    for rc, rg in zip(ha.apply_dl_model(cpu, test, []), ha.apply_dl_model(gpu, test, [])):
        cc = dict(zip(rc["classification_class_ids"], rc["classification_confidences"]))
        cg = dict(zip(rg["classification_class_ids"], rg["classification_confidences"]))
        assert_close([cg[c] for c in CLASS_IDS], [cc[c] for c in CLASS_IDS], atol=1e-4, rtol=1e-3,
                     what="confidences")


def reconfigure_and_move() -> None:
    """GPU vs CPU through what rebuilds or drops the GPU plans mid-training: a new batch size,
    optimize_for_inference (frees the training plans), cudnn_deterministic switched, a new image
    size, then GPU → CPU → GPU with the optimizer state (SGD and Adam, well-conditioned rates)."""
    ha.set_system("tf32", "false")
    for solver, lr in (("sgd", 1e-3), ("adam", 1e-4)):
        cpu, gpu = model("cpu", solver, lr=lr), model("gpu", solver, lr=lr)

        def both(fn):
            return fn(cpu), fn(gpu)

        bs = batches(3, seed=7)
        both(lambda m: ha.train_dl_model_batch(m, bs[0]))
        both(lambda m: ha.set_dl_model_param(m, "batch_size", 2))
        both(lambda m: ha.train_dl_model_batch(m, bs[1][:4]))
        both(lambda m: ha.set_dl_model_param(m, "optimize_for_inference", "true"))
        test = make_samples(3, SIZE, SIZE, 3, CLASS_IDS, np.random.default_rng(9))
        rc, rg = both(lambda m: ha.apply_dl_model(m, test, []))
        for a, b in zip(rc, rg):
            assert a["classification_class_ids"] == b["classification_class_ids"]
            assert_close(b["classification_confidences"], a["classification_confidences"], atol=1e-4, rtol=1e-3,
                         what=f"{solver} confidences")
        ha.set_system("cudnn_deterministic", "true")
        both(lambda m: ha.train_dl_model_batch(m, bs[2][:4]))
        ha.set_system("cudnn_deterministic", "false")
        both(lambda m: ha.set_dl_model_param(m, "image_dimensions", [40, 56, 3]))  # width, height
        b4 = make_samples(4, 56, 40, 3, CLASS_IDS, np.random.default_rng(3))
        both(lambda m: ha.train_dl_model_batch(m, b4))
        ha.set_dl_model_param(gpu, "runtime", "cpu")
        both(lambda m: ha.train_dl_model_batch(m, b4))
        ha.set_dl_model_param(gpu, "runtime", "gpu")
        both(lambda m: ha.train_dl_model_batch(m, b4))
        assert ha.get_dl_model_param(gpu, "runtime") == ["gpu"]
        pc, pg = params(cpu), params(gpu)
        for n in pc:
            assert_close(pg[n], pc[n], atol=1e-4, rtol=1e-3, what=f"{solver} {n}")
        sc, sg = cpu.core.get_state(), gpu.core.get_state()
        for k in ("m1", "m2") if solver == "adam" else ("m1",):
            assert_close(sg[k], sc[k], atol=1e-4, rtol=1e-3, what=f"{solver} optimizer state {k}")
        assert sg["steps"] == sc["steps"] == 6


def two_threads() -> None:
    """Two GPU models trained at once from two Python threads give bitwise the weights they
    give one after the other."""
    import threading  # noqa: PLC0415

    def train(m, bs, out):
        try:
            for b in bs:
                ha.train_dl_model_batch(m, b)
            out.append(params(m))
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            out.append(e)

    ref = []
    for seed in (1, 2):
        train(model("gpu", "adam", lr=1e-4), batches(3, seed=seed), ref)
    ms = [model("gpu", "adam", lr=1e-4) for _ in range(2)]
    outs = [[], []]
    threads = [threading.Thread(target=train, args=(ms[i], batches(3, seed=i + 1), outs[i])) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        got = outs[i][0]
        if isinstance(got, BaseException):
            raise got
        bad = [n for n in ref[i] if not np.array_equal(ref[i][n], got[n])]
        assert not bad, f"thread {i}: differs from the sequential run in {bad[:5]}"


def nonfinite_step() -> None:
    """SGD at a learning rate that blows the weights up: the GPU fails with 7720 at the same step
    as the CPU, the failed step changes nothing, and the model can go on (a smaller rate). With
    HALCDL_CUDA_DEBUG=2 the message names the first node with a non-finite output."""
    ha.set_system("tf32", "false")
    debug = os.environ.get("HALCDL_CUDA_DEBUG") == "2"
    failed_at = {}
    for rt in ("cpu", "gpu"):
        # 1e8: the loss passes the divergence bound (1e10, docs/robustness.md) while still
        # finite; 1e20 (debug run): the step-1 forward overflows, so the debug note has a node
        m = model(rt, "sgd", lr=1e20 if debug else 1e8)
        for i, b in enumerate(batches(5)):
            p0, s0 = params(m), m.core.get_state()
            try:
                ha.train_dl_model_batch(m, b)
            except ha.HOperatorError as e:
                assert e.error_code == 7720, e
                if rt == "gpu" and debug:
                    assert "HALCDL_CUDA_DEBUG: node" in str(e), e
                p1, s1 = params(m), m.core.get_state()
                assert all(np.array_equal(p0[n], p1[n]) for n in p0), f"{rt}: the failed step changed weights"
                assert np.array_equal(s0["m1"], s1["m1"]) and s0["steps"] == s1["steps"]
                failed_at[rt] = i
                break
        assert rt in failed_at, f"{rt}: the weights never became non-finite"
    assert failed_at["gpu"] == failed_at["cpu"], failed_at


def batch_size_search() -> None:
    lib = fake_runtime()
    for f in ("fake_cudart_peak_bytes",):
        getattr(lib, f).restype = ctypes.c_ulonglong
    total = core.gpu_device_info(0)["total_bytes"]
    m = model("gpu")
    static = lib.fake_cudart_live_bytes()  # weights, optimizer state, workspaces; no plan yet
    p0 = params(m)
    for mode in ("training", "inference"):
        bs, t = ha.optimize_dl_model_batch_size(
            m, mode, {"max_batch_size": 64, "num_iterations": 1, "warmup_iterations": 0})
        # the scratch copy (as large as the model) is on the GPU when the free memory is read
        assert t["memory_bound"] == int(0.8 * (total - 2 * static)), (t, total, static)
        sizes, mem = t["batch_size"], t["memory_bytes"]
        assert sizes == [1 << k for k in range(len(sizes))] and sizes[-1] < 64, t
        per = (mem[-1] - mem[-2]) / (sizes[-1] - sizes[-2])  # the estimate's bytes per sample
        assert mem[-1] <= t["memory_bound"] < mem[-1] + sizes[-1] * per, t  # the bound bites
        speeds = t["images_per_second"]
        assert bs == sizes[speeds.index(max(speeds))], t
        assert ha.get_dl_model_param(m, "batch_size") == [bs]
        assert ha.get_dl_model_param(m, "runtime") == ["gpu"]
        gc.collect()
        assert lib.fake_cudart_live_bytes() <= static + m.core.gpu_plan_bytes() + (1 << 20), \
            "the scratch copy was left on the GPU"
        p1 = params(m)
        assert all(np.array_equal(p0[n], p1[n]) for n in p0), f"{mode}: the search changed the weights"
        print(mode, "bound", t["memory_bound"], "sizes", sizes, "chosen", bs,
              "peak", lib.fake_cudart_peak_bytes(), "static", static)
    # one candidate's plan at a time: the training search's peak stayed within the model, the
    # scratch copy and one candidate's plan (its estimate) plus per-call buffers
    assert lib.fake_cudart_peak_bytes() <= 2 * static + max(mem) + (8 << 20), lib.fake_cudart_peak_bytes()
    # what was chosen trains at that size (no 6021)
    ha.set_dl_model_param(m, "batch_size", sizes[-1])
    ha.set_dl_model_param(m, "batch_size_multiplier", 1)
    rng = np.random.default_rng(3)
    ha.train_dl_model_batch(m, make_samples(sizes[-1], SIZE, SIZE, 3, CLASS_IDS, rng))
    # set_dl_model_param_max_gpu_batch_size: the largest power of two whose plan fits the free
    # memory; the model's cached plan counts as used
    free = total - lib.fake_cudart_live_bytes()
    ha.set_dl_model_param_max_gpu_batch_size(m, 1024)
    b = ha.get_dl_model_param(m, "batch_size")[0]
    assert b & (b - 1) == 0 and b * per * 0.9 <= free < 2 * b * per * 1.1, (b, per, free)
    ha.train_dl_model_batch(m, make_samples(b, SIZE, SIZE, 3, CLASS_IDS, rng))
    assert "cupy" not in sys.modules, "the GPU batch-size search imported CuPy"


def train_sequence_sgd() -> None:
    _train_sequence("sgd", 1e-3)


def train_sequence_adam() -> None:
    _train_sequence("adam", 1e-4)


SCENARIOS = {f.__name__: f for f in (warm_step_no_malloc, no_driver, upload_oom, malloc_fault_sweep,
                                     reconfigure_and_move, two_threads, nonfinite_step, batch_size_search, train_sequence_sgd,
                                     train_sequence_adam)}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in SCENARIOS:
        print(__doc__, file=sys.stderr)
        return 2
    if not os.environ.get("HALCDL_CUDA_LIBRARY"):
        print("HALCDL_CUDA_LIBRARY is not set (the emulated backend: tests/gpu_emu/build.py)", file=sys.stderr)
        return 2
    SCENARIOS[argv[0]]()
    print("OK", argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
