"""csrc/cuda/kernels.cu executed without a GPU: the unmodified source is translated
(tests/cuda_emu/translate.py rewrites the <<<...>>> launches and poisons __shared__ memory
per block, nothing else), compiled as host C++ against a CUDA emulation
(tests/cuda_emu/cuda_emu.h: blocks run one by one, the threads of a block are fibers with
exact __syncthreads / warp-shuffle semantics and a seeded, shuffled schedule) and every
launcher of csrc/cuda/kernels.cuh is compared with a numpy / PyTorch reference that follows
the CPU twins (cpu/kernels.cpp, cpu/dropout.cpp, cpu/node.h, ...).

- exactness where the CPU twin's arithmetic is reproducible (layouts, bf16 rounding,
  elementwise, dropout mask, SGD/Adam: bit for bit), tolerances where the kernel sums in a
  different order or uses expf;
- every buffer is guarded (writes out of bounds fail) and outputs are poisoned with NaN first
  (an element a kernel forgets to write fails);
- reductions are run under several schedules (threads and blocks in order, reversed,
  shuffled) and must give bit-identical results: the no-atomics / fixed-tree claim;
- the emulator itself is tested (test_emulator_*): shuffle semantics, and misuse it must
  expose (a missing barrier changes results with the schedule, a divergent barrier or a
  shuffle with exited lanes fails the launch, a bad configuration is refused);
- mutants of kernels.cu (test_mutants_are_caught) show that these tests fail on real bugs.

Skipped when there is no g++ or no csrc/ (an installed package tested without sources).
Limits of the emulation: no instruction-level interleaving (threads switch only at
barriers/shuffles; a non-atomic read-modify-write race on global memory between blocks is
not seen), glibc's expf/log instead of CUDA's (both within a few ulp), and nvcc's FMA
contraction of the kernels' plain float expressions is not reproduced (the emulation builds
with -ffp-contract=off; the __f*_rn paths are contraction-free on the GPU too).
"""
from __future__ import annotations

import concurrent.futures
import importlib.util
import math
import os
import re
import shutil
import tempfile

import numpy as np
import pytest

from helpers import assert_close

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _load_emu():
    spec = importlib.util.spec_from_file_location("halcdl_cuda_emu", os.path.join(HERE, "cuda_emu", "emu.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


emu = _load_emu()
_ok, _why = emu.available()
pytestmark = pytest.mark.skipif(not _ok, reason=f"CUDA kernel emulation unavailable: {_why}")

F32 = np.float32
U64 = np.uint64
SCHEDULES = [("in_order", 0), ("reverse", 0), ("random", 1), ("random", 2)]


@pytest.fixture(scope="module")
def K():
    return emu.load()


@pytest.fixture(autouse=True)
def _schedule(request):
    if "K" in request.fixturenames:
        k = request.getfixturevalue("K")
        k.schedule("random", 1)
        k.reset()
    yield


def poison(shape, dtype=F32):
    return np.full(shape, np.nan, dtype) if np.dtype(dtype).kind == "f" else np.full(shape, -7, dtype)


def bits(a):
    a = np.asarray(a)
    return a.view({4: np.uint32, 8: np.uint64, 2: np.uint16}[a.dtype.itemsize])


def assert_bits_equal(actual, expected, what):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    diff = bits(actual) != bits(expected)
    if diff.any():
        i = np.unravel_index(int(np.argmax(diff)), diff.shape)
        raise AssertionError(f"{what}: {int(diff.sum())}/{diff.size} elements differ bitwise; first at {i}: "
                             f"{actual[i]!r} vs expected {expected[i]!r}")


def under_schedules(K, fn):
    """fn() under every schedule; asserts the outputs are bitwise identical; returns them."""
    results = []
    for mode, seed in SCHEDULES:
        K.schedule(mode, seed)
        results.append(fn())
    K.schedule("random", 1)
    for (mode, seed), res in zip(SCHEDULES[1:], results[1:]):
        for i, (a, b) in enumerate(zip(res, results[0])):
            assert_bits_equal(np.asarray(a), np.asarray(b), f"output {i} under schedule {mode}/{seed} vs in_order")
    return results[0]


def launched(K):
    return [name for name, _, _ in K.log()]


# ---- coverage of the header ---------------------------------------------------------------

def test_every_launcher_is_wrapped_and_tested():
    with open(os.path.join(ROOT, "csrc", "cuda", "kernels.cuh"), encoding="utf-8") as f:
        header = f.read()
    declared = set(re.findall(r"^(?:void|size_t)\s+(\w+)\(", header, re.M))
    assert len(declared) >= 30, declared
    sizes = {"bias_grad_scratch_floats", "loss_scratch_doubles", "bf16_colsum_scratch_doubles"}
    assert declared - sizes == set(emu.SIGNATURES), "kernels.cuh and tests/cuda_emu (SIGNATURES, capi.cpp) differ"
    with open(__file__, encoding="utf-8") as f:
        me = f.read()
    untested = sorted(n for n in declared - sizes if f'"{n}"' not in me)
    assert not untested, f"launchers without a test: {untested}"


# ---- layout ---------------------------------------------------------------------------------

@pytest.mark.parametrize("n,c,hw", [(2, 3, 5), (1, 1, 7), (3, 7, 1), (2, 33, 65), (1, 64, 64), (2, 32, 32),
                                    (1, 1, 1), (3, 40, 31), (1, 3, 1024)])
def test_transposes(K, n, c, hw):
    rng = np.random.default_rng(n * 1000 + c * 10 + hw)
    x = rng.standard_normal((n, c, hw)).astype(F32)
    _, y = K.call("nchw_to_nhwc", x, poison((n, hw, c)), n, c, hw)
    assert_bits_equal(y, np.ascontiguousarray(x.transpose(0, 2, 1)), "nchw_to_nhwc")
    _, back = K.call("nhwc_to_nchw", y, poison((n, c, hw)), n, c, hw)
    assert_bits_equal(back, x, "nhwc_to_nchw")
    names = launched(K)
    if c == 1 or hw == 1:
        assert names == [], "the identity permutation is a copy, not a launch"
    else:
        assert names == ["transpose_kernel"] * 2


def test_transpose_empty(K):
    out = K.call("nchw_to_nhwc", np.zeros(0, F32), np.zeros(0, F32), 0, 3, 4)
    assert out[1].size == 0 and launched(K) == []


def bf16_round_ref(x):
    u = bits(np.asarray(x, F32)).astype(np.uint32)
    with np.errstate(over="ignore"):
        u = u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    return (u >> np.uint32(16)).astype(np.uint16)


def test_bf16_conversions(K):
    rng = np.random.default_rng(3)
    special = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, 3.4028235e38, -3.4028235e38, 1e-40, -1e-45,
                        1.17549435e-38], F32)
    # ties: 1 + 2^-8 (round to even: down), 1 + 3·2^-8 (up), just above / below a tie
    ties = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0x7F7F8000, 0x7FC00001, 0xFFC00000],
                    np.uint32).view(F32)
    x = np.concatenate([special, ties, rng.standard_normal(3000).astype(F32) * 100]).astype(F32)
    n = x.size
    _, h = K.call("f32_to_bf16", x, np.zeros(n, np.uint16), n)
    assert_bits_equal(h, bf16_round_ref(x), "f32_to_bf16 (the CPU twin's rounding, cpu/node.h)")
    _, back = K.call("bf16_to_f32", h, poison(n), n)
    assert_bits_equal(back, (h.astype(np.uint32) << np.uint32(16)).view(F32), "bf16_to_f32")
    # cross-check with torch's bf16 rounding on finite values (same RNE)
    torch = pytest.importorskip("torch")
    fin = np.isfinite(x) & (np.abs(x) < 3.3e38)
    t = torch.from_numpy(x[fin].copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert_bits_equal(h[fin], t, "f32_to_bf16 vs torch")


# ---- elementwise ----------------------------------------------------------------------------

def _eltwise_inputs(n=2500, seed=5):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 5).astype(F32)
    x[:10] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 6.0, 6.5, -1.0, 5.999999, 1e-38]
    return x


def test_relu_forward_backward(K):
    x = _eltwise_inputs()
    n = x.size
    dy = np.random.default_rng(1).standard_normal(n).astype(F32)
    _, y = K.call("relu_forward", x, poison(n), n)
    ref = np.where((x > 0) | np.isnan(x), x, F32(0)).astype(F32)
    assert_bits_equal(y, ref, "relu_forward (NaN propagates)")
    _, _, dx = K.call("relu_backward", y, dy, poison(n), n)
    assert_bits_equal(dx, np.where(y > 0, dy, F32(0)).astype(F32), "relu_backward: dy·[y > 0]")


def test_relu6_forward_backward(K):
    x = _eltwise_inputs(seed=6)
    n = x.size
    dy = np.random.default_rng(2).standard_normal(n).astype(F32)
    _, y = K.call("relu6_forward", x, poison(n), n)
    ref = np.where(np.isnan(x), x, np.where(x > 0, np.minimum(x, F32(6)), F32(0))).astype(F32)
    assert_bits_equal(y, ref, "relu6_forward")
    _, _, dx = K.call("relu6_backward", x, dy, poison(n), n)
    assert_bits_equal(dx, np.where((x > 0) & (x < 6), dy, F32(0)).astype(F32), "relu6_backward: dy·[0 < x < 6]")
    torch = pytest.importorskip("torch")
    xt = torch.from_numpy(x[10:].copy()).requires_grad_()
    yt = torch.nn.functional.relu6(xt)
    yt.backward(torch.from_numpy(dy[10:].copy()))
    assert_bits_equal(y[10:], yt.detach().numpy(), "relu6_forward vs torch")
    assert_bits_equal(dx[10:], xt.grad.numpy(), "relu6_backward vs torch (hardtanh_backward)")


def test_add_accumulate_mul_scale(K):
    rng = np.random.default_rng(7)
    for n in (1, 255, 256, 257, 3001):
        a = rng.standard_normal(n).astype(F32)
        b = rng.standard_normal(n).astype(F32)
        _, _, y = K.call("add", a, b, poison(n), n)
        assert_bits_equal(y, a + b, "add")
        dst, _ = K.call("accumulate", a, b, n)
        assert_bits_equal(dst, a + b, "accumulate")
        _, _, y = K.call("mul", a, b, poison(n), n)
        assert_bits_equal(y, a * b, "mul")
        (x,) = K.call("scale", a, F32(0.37), n)
        assert_bits_equal(x, a * F32(0.37), "scale")
    # add's output may alias an input (no __restrict__)
    a = rng.standard_normal(1000).astype(F32)
    b = rng.standard_normal(1000).astype(F32)
    ga = emu.Guarded(a)
    ya, yb = K.call("add", ga, b, ga, 1000)
    assert_bits_equal(ya, a + b, "add with y aliasing a")
    # n = 0 launches nothing
    K.reset()
    K.call("add", np.zeros(0, F32), np.zeros(0, F32), np.zeros(0, F32), 0)
    assert launched(K) == []


MASK64 = (1 << 64) - 1


def splitmix64_int(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def splitmix64_np(z: np.ndarray) -> np.ndarray:
    z = z.astype(U64)
    with np.errstate(over="ignore"):
        z = z + U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> U64(30))) * U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> U64(27))) * U64(0x94D049BB133111EB)
    return z ^ (z >> U64(31))


@pytest.mark.parametrize("p,rng_state,idx", [(0.3, 12345, 2), (0.5, 2**64 - 3, 7), (0.0, 99, 0), (0.9, 1, 1)])
def test_dropout_mask_is_the_cpu_rule(K, p, rng_state, idx):
    n = 4099
    p32 = float(F32(p))
    # cpu/dropout.cpp Dropout::forward: the caller's mixing of the seed, threshold and keep
    seed = splitmix64_int(rng_state ^ ((idx << 32) & MASK64))
    threshold = int(p32 * 18446744073709551616.0)
    keep = F32(1) / (F32(1) - F32(p32))
    x = np.random.default_rng(11).standard_normal(n).astype(F32)
    _, y, mask = K.call("dropout_forward", x, poison(n), poison(n), n, seed, threshold, keep)
    with np.errstate(over="ignore"):
        h = splitmix64_np(U64(seed) + np.arange(n, dtype=U64))
    assert [splitmix64_int((seed + i) & MASK64) for i in range(5)] == [int(v) for v in h[:5]]
    ref_mask = np.where(h >= U64(threshold), keep, F32(0)).astype(F32)
    assert_bits_equal(mask, ref_mask, "dropout mask")
    assert_bits_equal(y, x * ref_mask, "dropout y = x·mask")
    kept = float((mask != 0).mean())
    assert abs(kept - (1 - p)) < 0.05, kept



# ---- bfloat16 (precision 'bfloat16': bf16 activations, fp32 params / statistics) ----------------
# References: torch.bfloat16 for the rounding (its float → bf16 cast is round-to-nearest-even,
# like the kernels' store), float64 for the reductions.

def b2f(h):
    """bf16 bits → float32."""
    return (np.asarray(h, np.uint16).astype(np.uint32) << np.uint32(16)).view(F32)


def torch_bf16_bits(x):
    """float32 → bf16 bits, rounded by torch."""
    torch = pytest.importorskip("torch")
    return torch.from_numpy(np.array(x, F32, copy=True)).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def bf16_inputs(shape, seed, scale=3.0):
    x = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(F32)
    return torch_bf16_bits(x)


def test_bf16_elementwise_match_torch_rounding(K):
    torch = pytest.importorskip("torch")
    for n in (1, 257, 3001):
        a, b, dy = bf16_inputs(n, 1 + n), bf16_inputs(n, 2 + n), bf16_inputs(n, 3 + n)
        if n > 10:
            a[:6] = torch_bf16_bits(np.array([np.nan, np.inf, -np.inf, 0.0, 6.0, 6.5], F32))
        fa, fb, fdy = b2f(a), b2f(b), b2f(dy)
        _, y = K.call("relu_forward_bf16", a, np.zeros(n, np.uint16), n)
        assert_bits_equal(y, torch_bf16_bits(torch.relu(torch.from_numpy(fa)).numpy()), "relu_forward_bf16")
        _, _, dx = K.call("relu_backward_bf16", y, dy, np.zeros(n, np.uint16), n)
        assert_bits_equal(dx, np.where(b2f(y) > 0, dy, np.uint16(0)), "relu_backward_bf16")
        _, y6 = K.call("relu6_forward_bf16", a, np.zeros(n, np.uint16), n)
        ref6 = torch.nn.functional.relu6(torch.from_numpy(fa).to(torch.bfloat16)).view(torch.int16).numpy()
        assert_bits_equal(y6, ref6.view(np.uint16), "relu6_forward_bf16 (torch bf16)")
        _, _, dx6 = K.call("relu6_backward_bf16", a, dy, np.zeros(n, np.uint16), n)
        assert_bits_equal(dx6, np.where((fa > 0) & (fa < 6), dy, np.uint16(0)), "relu6_backward_bf16")
        ta, tb = torch.from_numpy(fa).to(torch.bfloat16), torch.from_numpy(fb).to(torch.bfloat16)
        _, _, ys = K.call("add_bf16", a, b, np.zeros(n, np.uint16), n)
        assert_bits_equal(ys, (ta + tb).view(torch.int16).numpy().view(np.uint16), "add_bf16 (torch bf16 add)")
        dst, _ = K.call("accumulate_bf16", a, b, n)
        assert_bits_equal(dst, ys, "accumulate_bf16")
        mask = np.where(np.random.default_rng(n).random(n) < 0.3, F32(0), F32(1 / 0.7)).astype(F32)
        _, _, ym = K.call("mul_mask_bf16", dy, mask, np.zeros(n, np.uint16), n)
        assert_bits_equal(ym, torch_bf16_bits(fdy * mask), "mul_mask_bf16")


def test_bf16_dropout_and_bias_add(K):
    n, p, seed = 4099, 0.3, 987654321
    threshold = int(float(F32(p)) * 18446744073709551616.0)
    keep = F32(1) / (F32(1) - F32(p))
    x = bf16_inputs(n, 9)
    _, y, mask = K.call("dropout_forward_bf16", x, np.zeros(n, np.uint16), poison(n), n, seed, threshold, keep)
    with np.errstate(over="ignore"):
        h = splitmix64_np(U64(seed) + np.arange(n, dtype=U64))
    ref_mask = np.where(h >= U64(threshold), keep, F32(0)).astype(F32)
    assert_bits_equal(mask, ref_mask, "dropout_forward_bf16 mask (the fp32 kernel's rule)")
    assert_bits_equal(y, torch_bf16_bits(b2f(x) * ref_mask), "dropout_forward_bf16 y = bf16(x·mask)")
    for rows, c in [(1, 1), (7, 3), (300, 70)]:
        yb = bf16_inputs((rows, c), rows + c)
        bias = np.random.default_rng(c).standard_normal(c).astype(F32)
        out, _ = K.call("bias_add_bf16", yb, bias, rows, c)
        assert_bits_equal(out, torch_bf16_bits(b2f(yb) + bias), f"bias_add_bf16 {rows}x{c}")


@pytest.mark.parametrize("rows,c", [(1, 1), (65, 33), (4096, 5), (40000, 3), (0, 4)])
def test_bias_grad_bf16(K, rows, c):
    dy = bf16_inputs((rows, c), rows + 3 * c, scale=1.0)
    ns = K.bf16_colsum_scratch_doubles(rows, c)
    assert ns >= min(512, max(1, -(-rows // 64))) * c
    res = under_schedules(K, lambda: K.call("bias_grad_bf16", dy, poison(c), rows, c, poison(ns, np.float64))[1:2])
    ref = b2f(dy).astype(np.float64).sum(0)
    bound = np.abs(b2f(dy).astype(np.float64)).sum(0) * 1e-7 + 1e-30
    assert np.all(np.abs(res[0].astype(np.float64) - ref) <= np.maximum(bound, np.abs(ref) * 1e-7)), "bias_grad_bf16"


def bn_ref64(x, scale, shift, eps):
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    st = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    sh = torch.tensor(shift, dtype=torch.float64, requires_grad=True)
    # NHWC rows × c: training batch norm over dim 0 (biased batch variance), written out
    # (F.batch_norm refuses one value per channel)
    mu = xt.mean(0)
    var = ((xt - mu) ** 2).mean(0)
    y = (xt - mu) / torch.sqrt(var + eps) * st + sh
    return xt, st, sh, y


def bf16_close(got_bits, exp, what):
    """bf16 outputs within one bf16 ulp (2^-8 relative) of the float64 reference."""
    assert_close(b2f(got_bits).astype(np.float64), exp, atol=1e-6 * (float(np.abs(exp).max()) + 1e-30),
                 rtol=2.0 ** -8, what=what)


@pytest.mark.parametrize("rows,c", [(1, 4), (2, 3), (64, 32), (130, 70), (5000, 6)])
def test_bn_bf16_training_forward_and_backward(K, rows, c):
    torch = pytest.importorskip("torch")
    eps, mom = 1e-5, 0.1
    rng = np.random.default_rng(rows * 7 + c)
    x = torch_bf16_bits((rng.standard_normal((rows, c)) * 2 + rng.standard_normal(c) * 3).astype(F32))
    dy = bf16_inputs((rows, c), rows + c + 1, scale=1.0)
    scale = rng.uniform(0.5, 1.5, c).astype(F32)
    shift = rng.standard_normal(c).astype(F32)
    rm0, rv0 = rng.standard_normal(c).astype(F32), rng.uniform(0.5, 2, c).astype(F32)
    ns = K.bf16_colsum_scratch_doubles(rows, c)

    def fwd():
        o = K.call("bn_forward_training_bf16", x, np.zeros((rows, c), np.uint16), scale, shift, rows, c, F32(eps),
                   F32(mom), rm0, rv0, poison(c), poison(c), poison(ns, np.float64))
        return [o[1], o[4], o[5], o[6], o[7]]  # y, running mean / var, save_mean, save_inv_std
    y, rm, rv, mean, inv = under_schedules(K, fwd)
    fx = b2f(x).astype(np.float64)
    mu, var = fx.mean(0), fx.var(0)
    assert_close(mean, mu, atol=1e-6 * np.abs(fx).max(), rtol=1e-6, what="bn bf16 save_mean")
    assert_close(inv, 1 / np.sqrt(var + eps), atol=0, rtol=1e-5, what="bn bf16 save_inv_std = 1/sqrt(var_B + eps)")
    uv = var * rows / (rows - 1) if rows > 1 else var
    assert_close(rm, 0.9 * rm0 + 0.1 * mu, atol=1e-6, rtol=1e-6, what="bn bf16 running mean")
    assert_close(rv, 0.9 * rv0 + 0.1 * uv, atol=1e-6, rtol=1e-5, what="bn bf16 running var (unbiased)")
    xt, st, sh, yr = bn_ref64(b2f(x), scale, shift, eps)
    bf16_close(y, yr.detach().numpy(), f"bn bf16 forward {rows}x{c}")
    # no running statistics: nothing written there
    r = K.call("bn_forward_training_bf16", x, np.zeros((rows, c), np.uint16), scale, shift, rows, c, F32(eps),
               F32(mom), None, None, poison(c), poison(c), poison(ns, np.float64))
    assert_bits_equal(r[1], y, "bn bf16 forward without running statistics")

    def bwd():
        return K.call("bn_backward_bf16", x, dy, scale, mean, inv, rows, c, np.zeros((rows, c), np.uint16), poison(c),
                      poison(c), poison(ns, np.float64))[5:8]
    dx, dscale, dshift = under_schedules(K, bwd)
    yr.backward(torch.tensor(b2f(dy), dtype=torch.float64))
    gs, gsh = st.grad.numpy(), sh.grad.numpy()
    assert_close(dshift, gsh, atol=1e-6 * np.abs(b2f(dy)).sum(0).max(), rtol=1e-6, what="bn bf16 dshift")
    assert_close(dscale, gs, atol=1e-4 * np.abs(b2f(dy)).sum(0).max(), rtol=1e-4, what="bn bf16 dscale")
    gx = xt.grad.numpy()
    # dx: the difference of nearly equal terms, rounded once to bf16; fp32 terms, so an
    # absolute slack relative to the largest |dy·scale·inv| as well
    big = float(np.max(np.abs(b2f(dy))) * np.max(scale * inv))
    assert_close(b2f(dx).astype(np.float64), gx, atol=2e-4 * big + 1e-30, rtol=2.0 ** -8, what="bn bf16 dx")
    # parameter gradients only
    r = K.call("bn_backward_bf16", x, dy, scale, mean, inv, rows, c, None, poison(c), poison(c),
               poison(ns, np.float64))
    assert_bits_equal(r[5], dscale, "bn bf16 dscale without dx")


@pytest.mark.parametrize("rows,c", [(1, 1), (300, 70)])
def test_bn_bf16_inference(K, rows, c):
    rng = np.random.default_rng(rows + c)
    x = bf16_inputs((rows, c), rows * 3 + c)
    scale = rng.uniform(0.5, 1.5, c).astype(F32)
    shift = rng.standard_normal(c).astype(F32)
    mean, var = rng.standard_normal(c).astype(F32), rng.uniform(0.2, 3, c).astype(F32)
    eps = 1e-3
    _, y = K.call("bn_forward_inference_bf16", x, np.zeros((rows, c), np.uint16), scale, shift, mean, var, rows, c,
                  F32(eps))[:2]
    ref = (b2f(x).astype(np.float64) - mean) / np.sqrt(var.astype(np.float64) + eps) * scale + shift
    bf16_close(y, ref, "bn bf16 inference")
    # the fp32 arithmetic replayed in numpy, rounded by torch: bit for bit
    iv = (1.0 / np.sqrt(var.astype(np.float64) + np.float64(F32(eps)))).astype(F32)
    yy = ((b2f(x) - mean) * iv) * scale + shift
    assert_bits_equal(y, torch_bf16_bits(yy.astype(F32)), "bn bf16 inference (fp32 arithmetic, one rounding)")


@pytest.mark.parametrize("n,hw,c", [(1, 1, 1), (2, 49, 3), (3, 7, 40), (2, 300, 2)])
def test_gap_bf16(K, n, hw, c):
    x = bf16_inputs((n, hw, c), n * 100 + hw + c)
    (y,) = under_schedules(K, lambda: K.call("gap_forward_bf16", x, np.zeros((n, c), np.uint16), n, hw, c)[1:2])
    ref = b2f(x).astype(np.float64).mean(1)
    # the double mean rounded to float, then to bf16: torch's rounding of the float mean
    assert_bits_equal(y, torch_bf16_bits(ref.astype(F32)), "gap_forward_bf16")
    dy = bf16_inputs((n, c), hw)
    _, dx = K.call("gap_backward_bf16", dy, np.zeros((n, hw, c), np.uint16), n, hw, c)
    exp = np.broadcast_to((b2f(dy) / F32(hw)).astype(F32)[:, None, :], (n, hw, c))
    assert_bits_equal(dx, torch_bf16_bits(exp), "gap_backward_bf16 = bf16(dy / hw)")


def test_concat_bf16_and_input_upload(K):
    rows, parts = 37, [3, 1, 40]
    ctot = sum(parts)
    xs = [bf16_inputs((rows, ci), ci) for ci in parts]
    y = np.zeros((rows, ctot), np.uint16)
    gy = emu.Guarded(y)
    off = 0
    for x, ci in zip(xs, parts):
        K.call("concat_forward_bf16", x, gy, rows, ci, off, ctot)
        off += ci
    y = gy.value()
    assert_bits_equal(y, np.concatenate(xs, 1), "concat_forward_bf16")
    off = 0
    for x, ci in zip(xs, parts):
        _, dx = K.call("concat_backward_bf16", y, np.zeros((rows, ci), np.uint16), rows, ci, off, ctot)
        assert_bits_equal(dx, x, f"concat_backward_bf16 at {off}")
        off += ci
    for n, c, hw in [(2, 3, 5), (1, 1, 7), (2, 33, 65)]:
        src = (np.random.default_rng(n + c + hw).standard_normal((n, c, hw)) * 100).astype(F32)
        _, dst = K.call("nchw_f32_to_nhwc_bf16", src, np.zeros((n, hw, c), np.uint16), n, c, hw)
        assert_bits_equal(dst, torch_bf16_bits(np.ascontiguousarray(src.transpose(0, 2, 1))),
                          "nchw_f32_to_nhwc_bf16 (transpose, then torch's rounding)")

# ---- channel-wise ---------------------------------------------------------------------------

def test_bias_add(K):
    rng = np.random.default_rng(13)
    for rows, c in [(1, 1), (7, 3), (300, 70), (33, 1)]:
        y = rng.standard_normal((rows, c)).astype(F32)
        b = rng.standard_normal(c).astype(F32)
        out, _ = K.call("bias_add", y, b, rows, c)
        assert_bits_equal(out, y + b, f"bias_add {rows}x{c}")


@pytest.mark.parametrize("rows,c", [(1, 1), (5, 3), (64, 32), (65, 33), (200, 70), (4096, 5), (40000, 3),
                                    (130, 1), (0, 4)])
def test_bias_grad(K, rows, c):
    rng = np.random.default_rng(rows + 17 * c)
    dy = (rng.standard_normal((rows, c)) + 0.5).astype(F32)
    ns = K.bias_grad_scratch_floats(rows, c)
    chunks = min(512, max(1, -(-rows // 64)))
    assert ns >= chunks * c
    scratch = poison(ns)
    res = under_schedules(K, lambda: K.call("bias_grad", dy, poison(c), rows, c, scratch)[1:2])
    db = res[0]
    ref = dy.astype(np.float64).sum(0)
    bound = dy.astype(np.float64).__abs__().sum(0) * 1e-6 + 1e-30
    err = np.abs(db.astype(np.float64) - ref)
    assert np.all(np.isfinite(db)), "bias_grad left elements unwritten"
    assert np.all(err <= bound), f"bias_grad {rows}x{c}: max err {err.max():.3e} (bound {bound.min():.3e})"
    if rows == 0:
        assert_bits_equal(db, np.zeros(c, F32), "bias_grad with no rows")


@pytest.mark.parametrize("n,hw,c", [(1, 1, 1), (2, 49, 3), (3, 7, 40), (2, 100, 64), (1, 1, 33), (4, 5, 1),
                                    (2, 300, 2)])
def test_gap(K, n, hw, c):
    rng = np.random.default_rng(n * 7 + hw + c)
    x = rng.standard_normal((n, hw, c)).astype(F32)
    (y,) = under_schedules(K, lambda: K.call("gap_forward", x, poison((n, c)), n, hw, c)[1:2])
    assert_close(y, x.astype(np.float64).mean(1), atol=1e-7, rtol=1e-6, what="gap_forward")
    dy = rng.standard_normal((n, c)).astype(F32)
    _, dx = K.call("gap_backward", dy, poison((n, hw, c)), n, hw, c)
    assert_bits_equal(dx, np.broadcast_to((dy / F32(hw))[:, None, :], (n, hw, c)).astype(F32), "gap_backward")


def test_gap_more_images_than_grid_rows(K):
    # grid.y is capped at 65535: blocks loop over images, reusing column_sum's shared memory
    # (its trailing barrier keeps the next image's writes from racing the previous sums)
    n, hw, c = 65535 + 77, 2, 1
    x = np.random.default_rng(73).standard_normal((n, hw, c)).astype(F32)
    _, y = K.call("gap_forward", x, poison((n, c)), n, hw, c)
    assert K.log()[0][1] == (1, 65535, 1)
    assert_close(y, x.astype(np.float64).mean(1), atol=1e-7, rtol=1e-6, what="gap_forward, n > 65535")


def test_gap_no_pixels(K):
    _, y = K.call("gap_forward", np.zeros(0, F32), poison((2, 3)), 2, 0, 3)
    assert_bits_equal(y, np.zeros((2, 3), F32), "gap_forward with hw = 0")


def test_concat(K):
    rng = np.random.default_rng(19)
    rows, cis = 37, [3, 1, 40]
    ctot = sum(cis)
    xs = [rng.standard_normal((rows, ci)).astype(F32) for ci in cis]
    y = poison((rows, ctot))
    off = 0
    for i, (x, ci) in enumerate(zip(xs, cis)):
        before = y.copy()
        _, y = K.call("concat_forward", x, y, rows, ci, off, ctot)
        untouched = np.ones(ctot, bool)
        untouched[off:off + ci] = False
        assert_bits_equal(y[:, untouched], before[:, untouched], f"concat_forward {i} wrote outside its channels")
        off += ci
    assert_bits_equal(y, np.concatenate(xs, 1), "concat_forward")
    dy = rng.standard_normal((rows, ctot)).astype(F32)
    off = 0
    for x, ci in zip(xs, cis):
        _, dx = K.call("concat_backward", dy, poison((rows, ci)), rows, ci, off, ctot)
        assert_bits_equal(dx, np.ascontiguousarray(dy[:, off:off + ci]), "concat_backward")
        off += ci


# ---- upsampling -----------------------------------------------------------------------------

UP_CASES = [(2, 3, 5, 3, 1), (2, 3, 5, 3, 2), (2, 3, 5, 3, 3), (1, 1, 1, 1, 2), (1, 4, 4, 33, 2), (2, 7, 3, 2, 5),
            (1, 1, 6, 2, 3), (1, 5, 1, 1, 4)]


@pytest.mark.parametrize("n,h,w,c,f", UP_CASES)
def test_upsample_nearest(K, n, h, w, c, f):
    rng = np.random.default_rng(n + h + w + c + f)
    x = rng.standard_normal((n, h, w, c)).astype(F32)
    _, y = K.call("upsample_nearest_forward", x, poison((n, h * f, w * f, c)), n, h, w, c, f)
    assert_bits_equal(y, x.repeat(f, 1).repeat(f, 2), "upsample_nearest_forward")
    dy = rng.standard_normal((n, h * f, w * f, c)).astype(F32)
    _, dx = K.call("upsample_nearest_backward", dy, poison((n, h, w, c)), n, h, w, c, f)
    ref = dy.astype(np.float64).reshape(n, h, f, w, f, c).sum((2, 4))
    assert_close(dx, ref, atol=1e-6, rtol=1e-6, what="upsample_nearest_backward")
    torch = pytest.importorskip("torch")
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).double().requires_grad_()
    yt = torch.nn.functional.interpolate(xt, scale_factor=f, mode="nearest")
    yt.backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()).double())
    assert_close(y, yt.detach().numpy().transpose(0, 2, 3, 1), atol=0, rtol=0, what="nearest vs torch")
    assert_close(dx, xt.grad.numpy().transpose(0, 2, 3, 1), atol=1e-6, rtol=1e-6, what="nearest bwd vs torch")


@pytest.mark.parametrize("n,h,w,c,f", UP_CASES + [(1, 8, 8, 1, 4), (1, 2, 9, 3, 3)])
def test_upsample_bilinear(K, n, h, w, c, f):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(100 + n + h + w + c + f)
    x = rng.standard_normal((n, h, w, c)).astype(F32)
    _, y = K.call("upsample_bilinear_forward", x, poison((n, h * f, w * f, c)), n, h, w, c, f)
    dy = rng.standard_normal((n, h * f, w * f, c)).astype(F32)
    _, dx = K.call("upsample_bilinear_backward", dy, poison((n, h, w, c)), n, h, w, c, f)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).double().requires_grad_()
    yt = torch.nn.functional.interpolate(xt, scale_factor=f, mode="bilinear", align_corners=False)
    yt.backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()).double())
    assert_close(y, yt.detach().numpy().transpose(0, 2, 3, 1), atol=1e-6, rtol=1e-6,
                 what="upsample_bilinear_forward vs torch (align_corners=False)")
    assert_close(dx, xt.grad.numpy().transpose(0, 2, 3, 1), atol=1e-5, rtol=1e-5,
                 what="upsample_bilinear_backward vs torch autograd")
    if f == 1:
        assert_bits_equal(y, x, "bilinear with f = 1 is the identity")


# ---- row softmax family -----------------------------------------------------------------------

def group_width(k):
    w = 1
    while w < 32 and w < k:
        w <<= 1
    return w


SOFTMAX_SHAPES = [(1, 1), (5, 2), (37, 3), (300, 5), (33, 8), (40, 16), (9, 17), (70, 31), (70, 32), (41, 33),
                  (10, 64), (19, 100), (2, 257)]


def softmax64(z):
    z = z.astype(np.float64)
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.mark.parametrize("rows,k", SOFTMAX_SHAPES)
def test_softmax_rows(K, rows, k):
    rng = np.random.default_rng(rows * 1000 + k)
    x = (rng.standard_normal((rows, k)) * 4).astype(F32)
    x[0] += 1000.0  # large logits: the max is subtracted
    if k > 2:
        x[-1, 1] = -np.inf
    (y,) = under_schedules(K, lambda: K.call("softmax_rows", x, poison((rows, k)), rows, k)[1:2])
    assert launched(K)[-1] == f"softmax_rows_kernel<{group_width(k)}>"
    assert_close(y, softmax64(x), atol=1e-7, rtol=2e-6, what="softmax_rows")
    dy = rng.standard_normal((rows, k)).astype(F32)
    (dx,) = under_schedules(K, lambda: K.call("softmax_rows_backward", y, dy, poison((rows, k)), rows, k)[2:3])
    y64, dy64 = y.astype(np.float64), dy.astype(np.float64)
    ref = y64 * (dy64 - (y64 * dy64).sum(1, keepdims=True))
    assert_close(dx, ref, atol=1e-6, rtol=1e-5, what="softmax_rows_backward")


def test_softmax_rows_all_minus_inf_row_is_nan_like_the_cpu(K):
    x = np.array([[-np.inf] * 3, [0.0, 1.0, 2.0]], F32)
    _, y = K.call("softmax_rows", x, poison((2, 3)), 2, 3)
    assert np.isnan(y[0]).all()
    assert_close(y[1], softmax64(x[1:])[0], atol=1e-7, rtol=1e-6, what="softmax_rows")


def argmax_ref(z):
    """cpu/kernels.cpp softmax_argmax_pixels: first strictly greater scan; confidence
    1/Σ exp(double(z_j − z_best)) (the difference in float)."""
    rows, k = z.shape
    best = np.zeros(rows, np.int64)
    bv = z[:, 0].copy()
    for j in range(1, k):
        m = z[:, j] > bv
        best[m] = j
        bv[m] = z[m, j]
    zb = z[np.arange(rows), best]
    with np.errstate(invalid="ignore", over="ignore"):
        d = (z - zb[:, None]).astype(F32)
        conf = (1.0 / np.exp(d.astype(np.float64)).sum(1)).astype(F32)
    return best.astype(np.int32), conf


def check_argmax(K):
    """Ties (first wins, also across lanes), NaN and ±inf rules, k < 32, = 32 and > 32."""
    rng = np.random.default_rng(23)
    for rows, k in [(50, 1), (50, 2), (61, 7), (40, 32), (45, 33), (20, 70)]:
        z = rng.integers(-3, 4, size=(rows, k)).astype(F32)  # many ties
        z[1] = 5.0  # all equal: index 0
        if k >= 3:
            z[2, :] = -np.inf
            z[3, 0] = np.nan              # NaN at j = 0 wins
            z[4, 1] = np.nan              # NaN at j > 0 never wins
            z[4, 0] = -np.inf
            z[5, k - 1] = np.inf
            z[6, 0], z[6, k - 1] = np.nan, np.inf   # NaN at 0 beats +inf
            z[7, :] = np.nan
        if k > 33:
            z[8, :] = 0.0
            z[8, 5] = z[8, 36] = z[8, 69] = 9.0   # lanes 5, 4, 5 (W = 32): the index decides, not the lane
        idx, conf = K.call("softmax_argmax_rows", z, rows, k, poison(rows, np.int32), poison(rows))[1:]
        ref_i, ref_c = argmax_ref(z)
        assert_bits_equal(idx, ref_i, f"softmax_argmax_rows index ({rows}x{k})")
        assert np.array_equal(np.isnan(conf), np.isnan(ref_c)), f"confidence NaN pattern ({rows}x{k})"
        ok = ~np.isnan(ref_c)
        assert_close(conf[ok], ref_c[ok], atol=1e-7, rtol=1e-6, what=f"softmax_argmax_rows confidence ({rows}x{k})")


def test_softmax_argmax_rows(K):
    check_argmax(K)


def test_softmax_argmax_rows_random_matches_softmax(K):
    rng = np.random.default_rng(29)
    rows, k = 257, 40
    z = rng.standard_normal((rows, k)).astype(F32)
    idx, conf = under_schedules(K, lambda: K.call("softmax_argmax_rows", z, rows, k, poison(rows, np.int32),
                                                  poison(rows))[1:])
    p = softmax64(z)
    assert_bits_equal(idx, p.argmax(1).astype(np.int32), "argmax")
    assert_close(conf, p.max(1), atol=1e-7, rtol=1e-6, what="confidence = max softmax")


# ---- losses ---------------------------------------------------------------------------------------

def xent_ref(z, labels, cw, pw, scale):
    """engine/kernels.h semantics in float64: loss = Σ w·l / Σ w; dz = scale·w/Σw·(p − onehot);
    w = cw[y]·pw, 0 for an ignored (< 0) or out-of-range label; Σ w = 0 → loss 0, dz 0.
    dz_y is computed as −f·Σ_{j≠y} p_j (no cancellation), like the kernel."""
    z = z.astype(np.float64)
    rows, k = z.shape
    valid = (labels >= 0) & (labels < k)
    w = np.zeros(rows)
    yv = np.where(valid, labels, 0)
    w[valid] = (cw[yv[valid]].astype(np.float64) if cw is not None else 1.0) * \
        (pw[valid].astype(np.float64) if pw is not None else 1.0)
    wsum = w.sum()
    dz = np.zeros_like(z)
    if wsum <= 0:
        return 0.0, dz, w, wsum
    mx = z.max(1, keepdims=True)
    e = np.exp(z - mx)
    se = e.sum(1, keepdims=True)
    lse = mx[:, 0] + np.log(se[:, 0])
    live = w != 0
    loss = float((w[live] * (lse[live] - z[live, yv[live]])).sum() / wsum)
    f = scale * w / wsum
    p = e / se
    dz = f[:, None] * p
    other = p.copy()
    other[np.arange(rows), yv] = 0
    dz[np.arange(rows), yv] = -f * other.sum(1)
    dz[~live] = 0
    return loss, dz, w, wsum


def run_xent(K, z, labels, cw, pw, scale):
    rows, k = z.shape
    scratch = poison(K.loss_scratch_doubles(rows), np.float64)
    if pw is None:
        out = K.call("softmax_xent", z, labels, cw, rows, k, F32(scale), poison((rows, k)), poison(1, np.float64),
                     scratch)
    else:
        out = K.call("softmax_xent_pixels", z, labels, cw, pw, rows, k, F32(scale), poison((rows, k)),
                     poison(1, np.float64), scratch)
    loss, dz = out[-2][0], out[-3]
    return loss, dz


def check_xent(K, z, labels, cw, pw, scale, what):
    loss, dz = run_xent(K, z, labels, cw, pw, scale)
    ref_loss, ref_dz, w, wsum = xent_ref(z, labels, cw, pw, scale)
    assert np.all(np.isfinite(dz)), f"{what}: dlogits not all written"
    if wsum <= 0:
        assert loss == 0.0, f"{what}: Σw = 0 must give loss 0, got {loss}"
        assert_bits_equal(dz, np.zeros_like(dz), f"{what}: Σw = 0 must give dlogits 0")
        return loss, dz
    assert math.isclose(loss, ref_loss, rel_tol=2e-6, abs_tol=1e-9), f"{what}: loss {loss} vs {ref_loss}"
    fmax = abs(scale) * np.abs(w).max() / wsum
    assert_close(dz, ref_dz, atol=1e-6 * fmax, rtol=1e-5, what=f"{what}: dlogits")
    dead = w == 0
    assert_bits_equal(dz[dead], np.zeros_like(dz[dead]), f"{what}: rows of weight 0 get dlogits 0")
    return loss, dz


@pytest.mark.parametrize("n,k", [(1, 1), (1, 2), (7, 10), (300, 3), (64, 33), (50, 70), (2100, 2)])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_xent(K, n, k, weighted):
    rng = np.random.default_rng(n * 100 + k + weighted)
    z = (rng.standard_normal((n, k)) * 3).astype(F32)
    labels = rng.integers(0, k, n).astype(np.int32)
    cw = rng.uniform(0.2, 2.0, k).astype(F32) if weighted else None
    scale = 0.5 if weighted else 1.0
    loss, dz = check_xent(K, z, labels, cw, None, scale, f"softmax_xent {n}x{k}")
    names = launched(K)
    assert names[-2] == f"xent_rows_kernel<{group_width(k)}>", names
    # an independent reference: PyTorch's cross_entropy(weight=w), mean reduction
    torch = pytest.importorskip("torch")
    zt = torch.from_numpy(z).double().requires_grad_()
    wt = torch.from_numpy(cw).double() if cw is not None else None
    lt = torch.nn.functional.cross_entropy(zt, torch.from_numpy(labels).long(), weight=wt)
    (lt * scale).backward()
    assert math.isclose(loss, lt.item(), rel_tol=2e-6, abs_tol=1e-9), (loss, lt.item())
    assert_close(dz, zt.grad.numpy(), atol=1e-7, rtol=1e-5, what="softmax_xent dlogits vs torch")


def test_softmax_xent_confident_rows_keep_relative_accuracy(K):
    # p_y → 1: dz_y = −f·Σ_{j≠y} p_j is tiny; the kernel computes it without cancellation
    n, k = 9, 40
    z = np.zeros((n, k), F32)
    labels = (np.arange(n) * 4 % k).astype(np.int32)
    z[np.arange(n), labels] = 25.0
    _, dz = run_xent(K, z, labels, None, None, 1.0)
    _, ref_dz, _, _ = xent_ref(z, labels, None, None, 1.0)
    assert_close(dz, ref_dz, atol=0, rtol=2e-6, what="dlogits of confident rows (relative)")


def test_softmax_xent_class_weights_summing_to_zero(K):
    rng = np.random.default_rng(31)
    n, k = 20, 5
    z = rng.standard_normal((n, k)).astype(F32)
    labels = rng.integers(0, 2, n).astype(np.int32)  # classes 0 and 1 only
    cw = np.array([0.0, 0.0, 1.0, 1.0, 1.0], F32)
    check_xent(K, z, labels, cw, None, 1.0, "softmax_xent Σw = 0")
    # and a batch where some rows have weight 0
    labels[::3] = 2
    check_xent(K, z, labels, cw, None, 1.0, "softmax_xent with zero-weight rows")
    # Σw = 0 with rows of nonzero weight (weights of both signs): still loss 0, dlogits 0
    labels = np.array([0, 1] * 10, np.int32)
    check_xent(K, z, labels, np.array([1.0, -1.0, 1.0, 1.0, 1.0], F32), None, 1.0, "softmax_xent Σw = 0, w ≠ 0")


def test_softmax_xent_out_of_range_labels_weigh_nothing(K):
    # kernels.cu row_weight: a label outside [0, k) is treated as ignored (CPU twin: undefined)
    rng = np.random.default_rng(37)
    n, k = 12, 4
    z = rng.standard_normal((n, k)).astype(F32)
    labels = rng.integers(0, k, n).astype(np.int32)
    labels[[1, 5]] = [k, 1000]
    labels[7] = -1
    check_xent(K, z, labels, None, None, 1.0, "softmax_xent out-of-range labels")


@pytest.mark.parametrize("rows,k", [(1, 3), (200, 2), (999, 5), (128, 33), (40, 64)])
@pytest.mark.parametrize("variant", ["plain", "class_w", "pixel_w", "both"])
def test_softmax_xent_pixels(K, rows, k, variant):
    rng = np.random.default_rng(rows * 10 + k)
    z = (rng.standard_normal((rows, k)) * 2).astype(F32)
    labels = rng.integers(0, k, rows).astype(np.int32)
    labels[rng.random(rows) < 0.3] = -1
    cw = rng.uniform(0.1, 3.0, k).astype(F32) if variant in ("class_w", "both") else None
    pw = rng.uniform(0.0, 2.0, rows).astype(F32) if variant in ("pixel_w", "both") else None
    if pw is not None and rows > 3:
        pw[:3] = 0.0
    pw_arg = pw if pw is not None else None

    def run():
        scratch = poison(K.loss_scratch_doubles(rows), np.float64)
        out = K.call("softmax_xent_pixels", z, labels, cw, pw_arg, rows, k, F32(0.25), poison((rows, k)),
                     poison(1, np.float64), scratch)
        return out[-3], out[-2]

    dz, loss = under_schedules(K, run)
    ref_loss, ref_dz, w, wsum = xent_ref(z, labels, cw, pw, 0.25)
    if wsum <= 0:
        assert loss[0] == 0.0 and not dz.any()
        return
    assert math.isclose(loss[0], ref_loss, rel_tol=2e-6, abs_tol=1e-9), (loss[0], ref_loss)
    assert_close(dz, ref_dz, atol=1e-6 * 0.25 * np.abs(w).max() / wsum, rtol=1e-5, what="pixel dlogits")
    assert_bits_equal(dz[w == 0], np.zeros_like(dz[w == 0]), "ignored / zero-weight pixels get dlogits 0")
    if pw is None:
        torch = pytest.importorskip("torch")
        zt = torch.from_numpy(z).double().requires_grad_()
        wt = torch.from_numpy(cw).double() if cw is not None else None
        lt = torch.nn.functional.cross_entropy(zt, torch.from_numpy(labels).long(), weight=wt, ignore_index=-1)
        (lt * 0.25).backward()
        assert math.isclose(loss[0], lt.item(), rel_tol=2e-6), (loss[0], lt.item())
        assert_close(dz, zt.grad.numpy(), atol=1e-7, rtol=1e-5, what="pixel dlogits vs torch")


def test_softmax_xent_pixels_all_ignored(K):
    rows, k = 300, 6
    z = np.random.default_rng(41).standard_normal((rows, k)).astype(F32)
    labels = np.full(rows, -1, np.int32)
    loss, dz = run_xent(K, z, labels, None, np.ones(rows, F32), 1.0)
    assert loss == 0.0
    assert_bits_equal(dz, np.zeros_like(dz), "all ignored: dlogits 0")
    # all pixel weights 0
    labels = np.zeros(rows, np.int32)
    loss, dz = run_xent(K, z, labels, None, np.zeros(rows, F32), 1.0)
    assert loss == 0.0
    assert_bits_equal(dz, np.zeros_like(dz), "all pixel weights 0: dlogits 0")


def test_loss_partials_beyond_the_grid(K):
    # more rows than kMaxPartials blocks cover in one pass (grid-stride in the reductions):
    # k = 33 → 8 rows per block, 1024 blocks → 8192 rows per pass
    rng = np.random.default_rng(43)
    rows, k = 8192 + 300, 33
    z = rng.standard_normal((rows, k)).astype(F32)
    labels = rng.integers(-1, k, rows).astype(np.int32)
    pw = rng.uniform(0.5, 1.5, rows).astype(F32)
    check_xent(K, z, labels, None, pw, 1.0, "softmax_xent_pixels, 8492 rows")
    grids = [g for name, g, _ in K.log() if name.startswith("xent_rows_kernel")]
    assert grids == [(1024, 1, 1)], grids


def test_launcher_errors_surface_as_exceptions(K):
    # CUDA_CHECK → halcdl::gpu::throw_cuda → EmuError (here: a memset of a null pointer)
    with pytest.raises(emu.EmuError, match="cudaErrorInvalidValue.*cudaMemsetAsync"):
        K.call("sum_squares", np.zeros(0, F32), 0, None, None)


def test_loss_no_rows(K):
    loss, dz = run_xent(K, np.zeros((0, 3), F32), np.zeros(0, np.int32), None, None, 1.0)
    assert loss == 0.0


# ---- optimizer ------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 255, 256, 257, 100000, 300000])
def test_sum_squares(K, n):
    x = (np.random.default_rng(n).standard_normal(n) * 3).astype(F32)
    scratch = poison(K.loss_scratch_doubles(n), np.float64)
    (out,) = under_schedules(K, lambda: K.call("sum_squares", x, n, poison(1, np.float64), scratch)[1:2])
    ref = float((x.astype(np.float64) ** 2).sum())
    assert math.isclose(out[0], ref, rel_tol=1e-12, abs_tol=0.0), (out[0], ref)
    if n > 262144:  # 1024 blocks of 256: grid-stride beyond
        assert K.log()[0][1] == (1024, 1, 1)


def test_check_finite(K):
    n = 5000
    x = np.random.default_rng(47).standard_normal(n).astype(F32)
    (flag,) = K.call("check_finite", x, n, np.ones(1, np.int32))[1:]
    assert flag[0] == 1
    for pos, bad in [(0, np.nan), (n - 1, np.inf), (1234, -np.inf), (4095, np.nan)]:
        y = x.copy()
        y[pos] = bad
        (flag,) = K.call("check_finite", y, n, np.ones(1, np.int32))[1:]
        assert flag[0] == 0, (pos, bad)
    # it only ever stores 0: a flag already 0 stays 0, n = 0 leaves it alone
    (flag,) = K.call("check_finite", x, n, np.zeros(1, np.int32))[1:]
    assert flag[0] == 0
    (flag,) = K.call("check_finite", np.zeros(0, F32), 0, np.ones(1, np.int32))[1:]
    assert flag[0] == 1


def sgd_ref(w, g, v, n_weight, lr, mom, wp):
    """cpu/kernels.cpp sgd_update in float32, operation by operation."""
    w, g, v = w.copy(), g.copy(), v.copy()
    lr, mom, wp = F32(lr), F32(mom), F32(wp)
    idx = np.arange(w.size)
    gg = g + np.where(idx < n_weight, wp * w, F32(0)).astype(F32)
    v = (mom * v - lr * gg).astype(F32)
    w = (w + v).astype(F32)
    return w, v


def adam_ref(w, g, m1, m2, n_weight, lr, b1, b2, eps, wp, t):
    """cpu/kernels.cpp adam_update in float32, operation by operation."""
    w, g, m1, m2 = w.copy(), g.copy(), m1.copy(), m2.copy()
    lr, b1, b2, eps, wp = F32(lr), F32(b1), F32(b2), F32(eps), F32(wp)
    c1 = F32(1.0 - math.pow(float(b1), float(t)))
    c2 = F32(1.0 - math.pow(float(b2), float(t)))
    idx = np.arange(w.size)
    gg = (g + np.where(idx < n_weight, wp * w, F32(0))).astype(F32)
    m1 = (b1 * m1 + (F32(1) - b1) * gg).astype(F32)
    m2 = (b2 * m2 + ((F32(1) - b2) * gg) * gg).astype(F32)
    w = (w - (lr * (m1 / c1)) / (np.sqrt(m2 / c2) + eps)).astype(F32)
    return w, m1, m2


def test_sgd_update_bit_exact(K):
    rng = np.random.default_rng(53)
    n, nw = 3001, 2000
    w = rng.standard_normal(n).astype(F32)
    v = np.zeros(n, F32)
    for step in range(3):
        g = rng.standard_normal(n).astype(F32)
        rw, rv = sgd_ref(w, g, v, nw, 0.01, 0.9, 0.0005)
        w, _, v = K.call("sgd_update", w, g, v, nw, n, F32(0.01), F32(0.9), F32(0.0005))
        assert_bits_equal(w, rw, f"sgd w, step {step}")
        assert_bits_equal(v, rv, f"sgd v, step {step}")
    # the weight prior acts on [0, n_weight) only
    w0 = np.ones(10, F32)
    w1, _, _ = K.call("sgd_update", w0, np.zeros(10, F32), np.zeros(10, F32), 4, 10, F32(1), F32(0), F32(0.5))
    assert_bits_equal(w1, np.array([0.5] * 4 + [1.0] * 6, F32), "weight prior on [0, n_weight)")


@pytest.mark.parametrize("t", [1, 2, 3, 1000])
def test_adam_update_bit_exact(K, t):
    rng = np.random.default_rng(59 + t)
    n, nw = 2500, 1700
    w = rng.standard_normal(n).astype(F32)
    m1 = (rng.standard_normal(n) * 0.1).astype(F32) if t > 1 else np.zeros(n, F32)
    m2 = (rng.random(n) * 0.01).astype(F32) if t > 1 else np.zeros(n, F32)
    g = rng.standard_normal(n).astype(F32)
    args = (0.001, 0.9, 0.999, 1e-8, 0.0005)
    rw, rm1, rm2 = adam_ref(w, g, m1, m2, nw, *args, t)
    ow, _, om1, om2 = K.call("adam_update", w, g, m1, m2, nw, n, *(F32(a) for a in args), t)
    assert_bits_equal(om1, rm1, "adam m")
    assert_bits_equal(om2, rm2, "adam v")
    assert_bits_equal(ow, rw, "adam w")
    if t == 1:  # bias correction: the first step moves each weight by about lr
        step = np.abs(ow - w)[nw:]
        assert np.all(np.abs(step - 0.001) < 1e-4)


def test_update_finite_checks(K):
    """The divergence checks (issue 15): the flag drops exactly when the update the twin
    kernel would make holds NaN/Inf; nothing is written (inputs unchanged)."""
    rng = np.random.default_rng(71)
    n, nw = 2500, 1700
    w = rng.standard_normal(n).astype(F32)
    g = rng.standard_normal(n).astype(F32)
    v = (rng.standard_normal(n) * 0.1).astype(F32)
    m2 = (rng.random(n) * 0.01).astype(F32)
    for lr, expect in ((0.01, 1), (3e38, 0)):
        with np.errstate(over="ignore", invalid="ignore"):
            rw, rv = sgd_ref(w, g, v, nw, lr, 0.9, 0.0005)
        assert bool(np.all(np.isfinite(rw)) and np.all(np.isfinite(rv))) == bool(expect)
        out = K.call("sgd_update_finite", w, g, v, nw, n, F32(lr), F32(0.9), F32(0.0005),
                     np.ones(1, np.int32))
        assert int(out[-1][0]) == expect, ("sgd", lr)
        assert_bits_equal(out[0], w, "sgd check must not write w")
        assert_bits_equal(out[2], v, "sgd check must not write v")
    g_inf = g.copy()
    g_inf[5] = np.inf
    out = K.call("sgd_update_finite", w, g_inf, v, nw, n, F32(0.01), F32(0.9), F32(0.0), np.ones(1, np.int32))
    assert int(out[-1][0]) == 0
    for gscale, expect in ((1.0, 1), (1e30, 0)):  # g² overflows the second moment
        gg = (g * F32(gscale)).astype(F32)
        out = K.call("adam_update_finite", w, gg, v, m2, nw, n, F32(0.001), F32(0.9), F32(0.999), F32(1e-8),
                     F32(0.0005), 3, np.ones(1, np.int32))
        assert int(out[-1][0]) == expect, ("adam", gscale)
        assert_bits_equal(out[3], m2, "adam check must not write v")


# ---- determinism across schedules, launch shapes ----------------------------------------------

def test_reductions_are_schedule_independent(K):
    """Every multi-thread reduction, bitwise, under in-order / reversed / shuffled threads
    and blocks (the tests above check several of them too)."""
    rng = np.random.default_rng(61)
    dy = rng.standard_normal((5000, 37)).astype(F32)
    ns = K.bias_grad_scratch_floats(5000, 37)
    under_schedules(K, lambda: K.call("bias_grad", dy, poison(37), 5000, 37, poison(ns))[1:2])
    x = rng.standard_normal((3, 200, 40)).astype(F32)
    under_schedules(K, lambda: K.call("gap_forward", x, poison((3, 40)), 3, 200, 40)[1:2])
    v = rng.standard_normal(70000).astype(F32)
    under_schedules(K, lambda: K.call("sum_squares", v, v.size, poison(1, np.float64),
                                      poison(K.loss_scratch_doubles(v.size), np.float64))[1:2])
    z = rng.standard_normal((700, 45)).astype(F32)
    lab = rng.integers(-1, 45, 700).astype(np.int32)
    under_schedules(K, lambda: K.call("softmax_xent_pixels", z, lab, None, None, 700, 45, F32(1), poison((700, 45)),
                                      poison(1, np.float64), poison(K.loss_scratch_doubles(700), np.float64))[-3:-1])
    t = rng.standard_normal((2, 70, 90)).astype(F32)
    under_schedules(K, lambda: K.call("nchw_to_nhwc", t, poison((2, 90, 70)), 2, 70, 90)[1:2])


def test_launch_configurations(K):
    # the 2-D kernels use (32, 8) blocks; the row kernels 256 threads; gap's grid.y is capped
    rows, c = 300, 70
    K.call("bias_grad", np.ones((rows, c), F32), poison(c), rows, c, poison(K.bias_grad_scratch_floats(rows, c)))
    log = K.log()
    assert log[0] == ("bias_grad_chunks_kernel", (3, 5, 1), (32, 8, 1)), log
    assert log[1][0] == "bias_grad_final_kernel"
    K.reset()
    K.call("softmax_rows", np.zeros((1000, 10), F32), poison((1000, 10)), 1000, 10)
    assert K.log() == [("softmax_rows_kernel<16>", (63, 1, 1), (256, 1, 1))]


# ---- the emulator itself ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def selftest():
    import ctypes as C
    lib = C.CDLL(emu.build_selftest())
    lib.selftest_message.restype = C.c_char_p
    lib.selftest_set_schedule.argtypes = [C.c_int, C.c_uint64]
    P, I, U = C.c_void_p, C.c_int, C.c_uint
    for name, sig in {"racy_sum": [P, P, I], "tree_sum": [P, P, I], "divergent_barrier": [P],
                      "exited_lanes_shuffle": [P], "shuffle": [P, I, I], "shuffle64": [P, P], "oob_write": [P, I],
                      "stale_shared": [P, I], "reverse": [P, P, I, I],
                      "index": [P, U, U, U, U, U, U], "bad_config": [P]}.items():
        fn = getattr(lib, "selftest_" + name)
        fn.argtypes = sig
        fn.restype = C.c_int
    return lib


def _p(a):
    return a.ctypes.data


def test_emulator_shuffle_semantics(selftest):
    """__shfl_*_sync and __ballot_sync as documented (CUDA C++ Programming Guide, warp
    shuffle functions; PTX shfl.sync): a source beyond the caller's segment of `width`
    lanes returns the caller's own value; xor may read an earlier segment."""
    for width in (1, 2, 4, 8, 16, 32):
        for arg in (0, 1, 3, 5, 16, 31):
            out = np.zeros(64 * 5, np.int32)
            assert selftest.selftest_shuffle(_p(out), arg, width) == 0, selftest.selftest_message()
            out = out.reshape(64, 5)
            for t in range(64):
                lane = t % 32
                lo = lane & ~(width - 1)
                warp0 = t - lane
                j = lane ^ arg
                x = warp0 + (j if j < lo + width else lane)
                d = lane + arg
                dn = warp0 + (d if d < lo + width else lane)
                u = lane - arg
                up = warp0 + (u if u >= lo else lane)
                ix = warp0 + lo + (arg & (width - 1))
                assert list(out[t, :4]) == [100 * x, 100 * dn, 100 * up, 100 * ix], (width, arg, t)
                ballot = sum(1 << l for l in range(32) if ((warp0 + l) % 3) == 0)
                assert out[t, 4] == np.int32(np.uint32(ballot).view(np.int32))


def test_emulator_shuffles_64_bit_values(selftest):
    d = np.zeros(32)
    i = np.zeros(32, np.int64)
    assert selftest.selftest_shuffle64(_p(d), _p(i)) == 0
    t = np.arange(32)
    assert_bits_equal(d, 1.0 / ((t ^ 5) + 3), "double shuffle")
    assert np.array_equal(i, (1 << 40) + (t ^ 3))


def test_emulator_exposes_a_missing_barrier(selftest):
    x = np.random.default_rng(67).standard_normal(8 * 128).astype(F32)
    ref = x.reshape(8, 128).astype(np.float64).sum(1)
    racy, tree = [], []
    for mode, seed in SCHEDULES:
        selftest.selftest_set_schedule({"in_order": 0, "reverse": 1, "random": 2}[mode], seed)
        out = np.zeros(8, F32)
        assert selftest.selftest_racy_sum(_p(x), _p(out), 8) == 0
        racy.append(out)
        out = np.zeros(8, F32)
        assert selftest.selftest_tree_sum(_p(x), _p(out), 8) == 0
        tree.append(out)
    assert any(not np.array_equal(racy[0], r) for r in racy[1:]), "a race went unnoticed"
    assert all(np.array_equal(tree[0], r) for r in tree[1:])
    assert_close(tree[0], ref, atol=1e-5, rtol=1e-5, what="tree sum")


def test_emulator_reports_misuse(selftest):
    out = np.zeros(2048, F32)
    rc = selftest.selftest_divergent_barrier(_p(out))
    assert rc == 719 and b"deadlock" in selftest.selftest_message(), selftest.selftest_message()
    rc = selftest.selftest_exited_lanes_shuffle(_p(out))
    assert rc == 719 and b"have exited" in selftest.selftest_message(), selftest.selftest_message()
    iout = np.zeros(4096, np.int32)
    rc = selftest.selftest_bad_config(_p(iout))
    assert rc == 9 and b"invalid launch configuration" in selftest.selftest_message()


def test_emulator_shared_memory_is_fresh_per_block(selftest):
    selftest.selftest_set_schedule(0, 0)  # in order: block 0 runs first
    out = np.zeros(3 * 32, F32)
    assert selftest.selftest_stale_shared(_p(out), 3) == 0
    assert np.all(out[:32] == 1.0)
    assert np.all(np.isnan(out[32:])), "a block saw shared memory written by an earlier block"
    x = np.arange(3 * 40, dtype=F32)
    out = np.zeros_like(x)
    assert selftest.selftest_reverse(_p(x), _p(out), 3, 40) == 0, selftest.selftest_message()
    assert np.array_equal(out, x.reshape(3, 40)[:, ::-1].reshape(-1)), "extern __shared__"


def test_emulator_indexes_and_guards(selftest, K):
    gx, gy, gz, bx, by, bz = 3, 2, 2, 4, 3, 2
    out = np.full(gx * gy * gz * bx * by * bz, -1, np.int32)
    assert selftest.selftest_index(_p(out), gx, gy, gz, bx, by, bz) == 0
    nt = bx * by * bz
    assert np.array_equal(out, np.array([b * 1000 + t for b in range(gx * gy * gz) for t in range(nt)], np.int32))
    # a write one past the end is caught by the guarded buffers
    g = emu.Guarded(np.zeros(16, F32))
    assert selftest.selftest_oob_write(g.ptr, 16) == 0
    with pytest.raises(AssertionError, match="out-of-bounds write"):
        g.check("oob")


def test_emulator_translation_keeps_lines():
    tr = emu.translate
    src = ("#define L(K, ...) \\\n  K<1><<<(g), 32, 0, (s)>>>(__VA_ARGS__);\n"
           "void f() {\n  a::k<2, T><<<dim3(1, 2), 64>>>(x,\n    y);\n  k0<<<1, 1>>>();\n}\n")
    out = tr.translate(src, "x.cu")
    assert out.count("\n") == src.count("\n") + 2
    assert '::emu::launch(#K "<1>", K<1>, ::emu::LaunchConfig((g), 32, 0, (s)), __VA_ARGS__)' in out
    assert '::emu::launch("a::k<2, T>", a::k<2, T>, ::emu::LaunchConfig(dim3(1, 2), 64), x,\n    y)' in out
    assert '::emu::launch("k0", k0, ::emu::LaunchConfig(1, 1))' in out
    src = ("namespace a {\n__shared__ int g;\n__global__ void k() {\n  __shared__ float t[4][5];  // x\n"
           "  extern __shared__ float dyn[];\n  { __shared__ double d; }\n}\n}\n"
           'extern "C" {\n__shared__ int h;\nstruct S {\n  int v;\n};\n}\n')
    out = tr.translate(src, "y.cu")
    assert out.count("poison_shared") == 2
    assert "float* const dyn = reinterpret_cast<float*>(::emu::dynamic_shared());" in out
    assert "__shared__ float t[4][5]; ::emu::poison_shared(&t, sizeof(t));  // x" in out
    assert "__shared__ double d; ::emu::poison_shared(&d, sizeof(d)); }" in out


# ---- mutants: the tests above fail on real bugs -------------------------------------------------

MUTANTS = {
    # block_sum without the barrier between tree levels
    "block_sum_race": ("    if (static_cast<int>(threadIdx.x) < s) sh[threadIdx.x] += sh[threadIdx.x + s];\n"
                       "    __syncthreads();",
                       "    if (static_cast<int>(threadIdx.x) < s) sh[threadIdx.x] += sh[threadIdx.x + s];"),
    # argmax tie-break: the larger index wins across lanes
    "argmax_tie": ("(ov == bv && oi < bi)", "(ov == bv && oi > bi)"),
}


def _build_mutant(name):
    old, new = MUTANTS[name]
    with open(emu.KERNELS_CU, encoding="utf-8") as f:
        text = f.read()
    assert text.count(old) == 1, f"mutant {name}: the pattern is no longer in kernels.cu (update MUTANTS)"
    d = tempfile.mkdtemp(prefix="kernels_mutant_")
    try:
        path = os.path.join(d, "kernels.cu")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace(old, new))
        return emu.build(path, tag=f"mutant_{name}")
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_mutants_are_caught():
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as ex:
        libs = dict(zip(MUTANTS, ex.map(_build_mutant, MUTANTS)))
    race = emu.Kernels(libs["block_sum_race"])
    v = np.random.default_rng(71).standard_normal(70000).astype(F32)
    with pytest.raises(AssertionError):
        under_schedules(race, lambda: race.call("sum_squares", v, v.size, poison(1, np.float64),
                                                poison(race.loss_scratch_doubles(v.size), np.float64))[1:2])
    tie = emu.Kernels(libs["argmax_tie"])
    with pytest.raises(AssertionError, match="index"):
        check_argmax(tie)


# ---- layer-API ops: sigmoid, tanh, resize, depth_to_space ---------------------------------------

@pytest.mark.parametrize("op", ["sigmoid", "tanh"])
def test_sigmoid_tanh_forward_backward(K, op):
    torch = pytest.importorskip("torch")
    x = _eltwise_inputs(n=700, seed=9)[10:]
    x[:4] = [-100.0, 100.0, 0.0, -0.0]
    n = x.size
    dy = np.random.default_rng(3).standard_normal(n).astype(F32)
    fwd, bwd = {"sigmoid": ("sigmoid_forward", "sigmoid_backward"), "tanh": ("tanh_forward", "tanh_backward")}[op]
    _, y = K.call(fwd, x, poison(n), n)
    fn = torch.sigmoid if op == "sigmoid" else torch.tanh
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_()
    yt = fn(xt)
    yt.backward(torch.from_numpy(dy.astype(np.float64)))
    assert_close(y, yt.detach().numpy(), atol=1e-7, rtol=1e-6, what=f"{op}_forward vs torch")
    _, _, dx = K.call(bwd, y, dy, poison(n), n)
    ref = dy * (y * (F32(1) - y)) if op == "sigmoid" else dy * (F32(1) - y * y)
    assert_bits_equal(dx, ref.astype(F32), f"{op}_backward from the output")
    assert_close(dx, xt.grad.numpy(), atol=1e-6, rtol=1e-5, what=f"{op}_backward vs torch autograd")


RESIZE_EMU_CASES = [(2, 4, 5, 3, 7, 9), (1, 6, 6, 2, 4, 3), (1, 3, 4, 1, 3, 4), (1, 1, 1, 2, 3, 2),
                    (1, 5, 7, 1, 10, 14), (2, 8, 3, 2, 3, 8), (1, 2, 9, 33, 5, 4)]


@pytest.mark.parametrize("bilinear", [0, 1], ids=["nearest", "bilinear"])
@pytest.mark.parametrize("n,h,w,c,oh,ow", RESIZE_EMU_CASES)
def test_resize(K, n, h, w, c, oh, ow, bilinear):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(n + h * 10 + oh * 100 + bilinear)
    x = rng.standard_normal((n, h, w, c)).astype(F32)
    dy = rng.standard_normal((n, oh, ow, c)).astype(F32)
    _, y = K.call("resize_forward", x, poison((n, oh, ow, c)), n, h, w, c, oh, ow, bilinear)
    _, dx = K.call("resize_backward", dy, poison((n, h, w, c)), n, h, w, c, oh, ow, bilinear)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).double().requires_grad_()
    mode = dict(mode="bilinear", align_corners=False) if bilinear else dict(mode="nearest-exact")
    yt = torch.nn.functional.interpolate(xt, size=(oh, ow), **mode)
    yt.backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()).double())
    assert_close(y, yt.detach().numpy().transpose(0, 2, 3, 1), atol=1e-6, rtol=1e-6, what="resize_forward vs torch")
    assert_close(dx, xt.grad.numpy().transpose(0, 2, 3, 1), atol=1e-5, rtol=1e-5,
                 what="resize_backward vs torch autograd")


@pytest.mark.parametrize("crd", [1, 0], ids=["crd", "dcr"])
@pytest.mark.parametrize("n,h,w,co,b", [(2, 3, 4, 2, 2), (1, 2, 3, 3, 3), (1, 1, 1, 5, 1), (2, 2, 2, 1, 4)])
def test_depth_to_space(K, n, h, w, co, b, crd):
    torch = pytest.importorskip("torch")
    from torch_twin import depth_to_space  # noqa: PLC0415
    rng = np.random.default_rng(n + h + w + co + b + crd)
    x = rng.standard_normal((n, h, w, co * b * b)).astype(F32)
    _, y = K.call("depth_to_space_forward", x, poison((n, h * b, w * b, co)), n, h, w, co, b, crd)
    ref = depth_to_space(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), b, bool(crd)).numpy()
    assert_bits_equal(y, np.ascontiguousarray(ref.transpose(0, 2, 3, 1)), "depth_to_space_forward (a permutation)")
    _, back = K.call("depth_to_space_backward", y, poison(x.shape), n, h, w, co, b, crd)
    assert_bits_equal(back, x, "depth_to_space_backward inverts the forward")


@pytest.mark.parametrize("n,h,w,c,oh,ow,oc", [(2, 3, 4, 5, 5, 2, 6), (1, 1, 1, 12, 2, 3, 2), (2, 2, 2, 2, 1, 1, 8),
                                              (1, 4, 3, 33, 11, 1, 36)])
def test_reshape_nhwc(K, n, h, w, c, oh, ow, oc):
    rng = np.random.default_rng(n + h + w + c)
    x = rng.standard_normal((n, h, w, c)).astype(F32)
    _, y = K.call("reshape_nhwc", x, poison((n, oh, ow, oc)), n, h, w, c, oh, ow, oc)
    ref = x.transpose(0, 3, 1, 2).reshape(n, oc, oh, ow).transpose(0, 2, 3, 1)
    assert_bits_equal(y, np.ascontiguousarray(ref), "reshape_nhwc: the NCHW-order values under new dims")
    _, back = K.call("reshape_nhwc", y, poison(x.shape), n, oh, ow, oc, h, w, c)
    assert_bits_equal(back, x, "reshape_nhwc with the shapes swapped inverts it")


@pytest.mark.parametrize("perm", [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)])
def test_permute_nhwc(K, perm):
    n, c, h, w = 2, 3, 4, 5
    rng = np.random.default_rng(sum(perm) + perm[0])
    x = rng.standard_normal((n, h, w, c)).astype(F32)
    ref = x.transpose(0, 3, 1, 2).transpose(0, *[1 + p for p in perm])      # logical (n, A0, A1, A2)
    _, y = K.call("permute_nhwc", x, poison(ref.transpose(0, 2, 3, 1).shape), n, c, h, w, *perm)
    assert_bits_equal(y, np.ascontiguousarray(ref.transpose(0, 2, 3, 1)), f"permute_nhwc {perm}")
    inv = [perm.index(k) for k in range(3)]
    _, back = K.call("permute_nhwc", y, poison(x.shape), n, *ref.shape[1:], *inv)
    assert_bits_equal(back, x, "permute_nhwc by the inverse permutation inverts it")


@pytest.mark.parametrize("argmax", [0, 1])
@pytest.mark.parametrize("n,h,w,c", [(2, 3, 4, 5), (1, 1, 1, 1), (3, 2, 5, 17)])
def test_depth_max(K, n, h, w, c, argmax):
    rng = np.random.default_rng(n * 100 + c + argmax)
    x = rng.integers(-3, 4, (n, h, w, c)).astype(F32)   # small integers: ties, the first one wins
    best = np.argmax(x, axis=3)                          # numpy: the first maximum
    _, y = K.call("depth_max_forward", x, poison((n, h, w)), n * h * w, c, argmax)
    ref = best.astype(F32) if argmax else np.take_along_axis(x, best[..., None], 3)[..., 0]
    assert_bits_equal(y, ref, f"depth_max_forward argmax={argmax}")
    dy = rng.standard_normal((n, h, w)).astype(F32)
    _, _, dx = K.call("depth_max_backward", x, dy, poison(x.shape), n * h * w, c, argmax)
    want = np.zeros_like(x)
    if not argmax:
        np.put_along_axis(want, best[..., None], dy[..., None], 3)
    assert_bits_equal(dx, want, f"depth_max_backward argmax={argmax}: dy at the first maximum, 0 elsewhere")


@pytest.mark.parametrize("c,size,alpha,beta,k", [(7, 5, 1e-2, 0.75, 2.0), (3, 1, 0.5, 0.5, 1.0),
                                                 (4, 9, 1.0, 1.5, 0.5)])
def test_lrn(K, c, size, alpha, beta, k):
    torch = pytest.importorskip("torch")
    n, h, w = 2, 3, 4
    rng = np.random.default_rng(c + size)
    x = (rng.standard_normal((n, h, w, c)) * 2).astype(F32)
    dy = rng.standard_normal((n, h, w, c)).astype(F32)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), dtype=torch.float64, requires_grad=True)
    yt = torch.nn.functional.local_response_norm(xt, size, alpha, beta, k)
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2), dtype=torch.float64))
    _, y = K.call("lrn_forward", x, poison(x.shape), x.size, c, size, alpha, beta, k)
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), rtol=2e-6, atol=1e-6)
    _, _, dx = K.call("lrn_backward", x, dy, poison(x.shape), x.size, c, size, alpha, beta, k)
    np.testing.assert_allclose(dx, xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", [0, 1, 2])
@pytest.mark.parametrize("rh,rw,rc", [(0, 0, 1), (1, 1, 0), (1, 0, 1), (1, 1, 1), (0, 1, 0)])
def test_reduce(K, rh, rw, rc, mode):
    torch = pytest.importorskip("torch")
    n, h, w, c = 2, 3, 4, 5
    rng = np.random.default_rng(rh + 2 * rw + 4 * rc + 8 * mode)
    x = rng.standard_normal((n, h, w, c)).astype(F32)
    dims = tuple(d for d, r in ((1, rh), (2, rw), (3, rc)) if r)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = [xt.sum(dims, keepdim=True), xt.mean(dims, keepdim=True),
          xt.square().sum(dims, keepdim=True).sqrt()][mode]
    ys = (n, 1 if rh else h, 1 if rw else w, 1 if rc else c)
    _, y = K.call("reduce_forward", x, poison(ys), n, h, w, c, rh, rw, rc, mode)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(ys).astype(F32)
    yt.backward(torch.tensor(dy, dtype=torch.float64))
    _, _, _, dx = K.call("reduce_backward", x, y, dy, poison(x.shape), n, h, w, c, rh, rw, rc, mode)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lt,rt", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_matmul_nhwc(K, lt, rt):
    n, c, m, k, p = 2, 3, 4, 5, 6
    rng = np.random.default_rng(2 * lt + rt)
    ls = (m, k) if not lt else (k, m)
    rs = (k, p) if not rt else (p, k)
    lx = rng.standard_normal((n, *ls, c)).astype(F32)   # NHWC
    rx = rng.standard_normal((n, *rs, c)).astype(F32)
    lm = lx.transpose(0, 3, 1, 2).astype(np.float64)
    rm = rx.transpose(0, 3, 1, 2).astype(np.float64)
    ref = (lm.swapaxes(2, 3) if lt else lm) @ (rm.swapaxes(2, 3) if rt else rm)   # (n, c, m, p)
    _, _, out = K.call("matmul_nhwc", lx, lt, *ls, rx, rt, *rs, poison((n, m, p, c)), n, c)
    np.testing.assert_allclose(out, ref.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
