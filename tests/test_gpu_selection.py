"""Device selection where there is no usable GPU (CI): the request fails with the HALCON
error that says why, and loses nothing.  (The GPU itself is tested in test_gpu.py.)

- a build without the CUDA backend → 7742;
- a CUDA-enabled build on a machine without a driver → 7709, without a GPU → 7708;
- cuDNN / cuBLAS missing → 7718 / 7717.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from helpers import has_gpu, make_samples

import halcdl as ha
from halcdl._native import core

pytestmark = pytest.mark.skipif(has_gpu(), reason="this machine has a GPU (see test_gpu.py)")

NO_GPU_CODES = (7742, 7708, 7709, 7717, 7718)


def _expected_codes():
    return (7742,) if not core.cuda_backend_built() else (7708, 7709, 7717, 7718)


def _model():
    ha.set_system("seed_rand", 3)
    m = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    ha.set_dl_model_param(m, "image_dimensions", [32, 32, 3])
    ha.set_dl_model_param(m, "class_ids", [0, 1])
    ha.set_dl_model_param(m, "batch_size", 2)
    return m


def _snapshot(m):
    return ({n: np.asarray(m.core.get_param(n)).copy() for n in m.core.param_names()},
            dict(m.params))


def _unchanged(m, snap):
    params, hp = snap
    assert m.params == hp
    for n, v in params.items():
        assert np.array_equal(np.asarray(m.core.get_param(n)), v), n
    assert m.core.device() == -1


@pytest.mark.parametrize("how", ["runtime", "gpu_then_runtime"])
def test_runtime_gpu_fails_cleanly(how):
    m = _model()
    batch = make_samples(2, 32, 32, 3, [0, 1], np.random.default_rng(0))
    ha.train_dl_model_batch(m, batch)  # some optimizer state to lose
    state = m.core.get_state()
    snap = _snapshot(m)
    with pytest.raises(ha.HOperatorError) as e:
        if how == "gpu_then_runtime":
            ha.set_dl_model_param(m, "gpu", 0)
            snap[1]["gpu"] = 0
        ha.set_dl_model_param(m, "runtime", "gpu")
    assert e.value.error_code in _expected_codes(), e.value
    msg = str(e.value).lower()
    assert any(w in msg for w in ("cuda", "gpu", "driver", "cudnn", "cublas")), msg
    _unchanged(m, snap)
    assert np.array_equal(m.core.get_state()["m1"], state["m1"])
    ha.train_dl_model_batch(m, batch)  # still trains on the CPU
    assert ha.get_dl_model_param(m, "runtime") == ["cpu"]
    assert ha.get_dl_device_param(ha.get_dl_model_param(m, "device")[0], "type") == ["cpu"]


def test_no_gpu_listed():
    assert ha.query_available_dl_devices(["runtime"], ["gpu"]) == []
    cpu = ha.query_available_dl_devices(["runtime", "runtime"], ["gpu", "cpu"])
    assert [ha.get_dl_device_param(d, "type") for d in cpu] == [["cpu"]]


def test_gpu_device_handle_on_cpu_machine():
    """A GPU handle made up by hand (none is listed here) fails like runtime 'gpu'."""
    m = _model()
    snap = _snapshot(m)
    with pytest.raises(ha.HOperatorError) as e:
        ha.set_dl_model_param(m, "device", ha.DLDevice("gpu", 0, "fake"))
    assert e.value.error_code in _expected_codes()
    _unchanged(m, snap)


def test_run_op_on_gpu_fails_cleanly():
    x = np.zeros((1, 2, 3, 3), np.float32)
    with pytest.raises(ha.HOperatorError) as e:
        core.run_op({"name": "op", "op": "relu", "inputs": ["in0"]}, [x], {}, None, True, device=0)
    assert e.value.error_code in NO_GPU_CODES


def test_gpu_outputs_param():
    m = _model()
    assert ha.get_dl_model_param(m, "gpu_outputs") == ["false"]
    ha.set_dl_model_param(m, "gpu_outputs", "true")  # only matters on the GPU
    res = ha.apply_dl_model(m, make_samples(1, 32, 32, 3, [0, 1], np.random.default_rng(1)), [])
    assert isinstance(res[0]["classification_confidences"], list)
    with pytest.raises(ha.HOperatorError) as e:
        ha.set_dl_model_param(m, "gpu_outputs", "maybe")
    assert e.value.error_code == 1303  # wrong value of control parameter 3


@pytest.mark.parametrize("name", ["tf32", "cudnn_deterministic"])
def test_gpu_system_params(name):
    old = ha.get_system(name)
    try:
        for v in ("true", "false"):
            ha.set_system(name, v)
            assert ha.get_system(name) == [v]
        with pytest.raises(ha.HOperatorError):
            ha.set_system(name, "yes")
        assert ha.get_system(name) == ["false"]
    finally:
        ha.set_system(name, old[0])


def test_cuda_not_loaded_at_import():
    """Importing halcdl and training on the CPU loads no CUDA library (a CUDA-enabled build
    must run on machines without a driver)."""
    code = (
        "import halcdl as ha, numpy as np\n"
        "m = ha.read_dl_model('pretrained_dl_classifier_compact.hdl')\n"
        "ha.set_dl_model_param(m, 'image_dimensions', [32, 32, 3])\n"
        "ha.apply_dl_model(m, [{'image': np.zeros((32, 32, 3), np.float32)}], [])\n"
        "maps = open('/proc/self/maps').read()\n"
        "bad = [l for l in ('libcudnn', 'libcublas', 'libhalcdl_cuda', 'libcuda.so') if l in maps]\n"
        "print('LOADED', bad)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout, out.stdout


class _FakeDeviceArray:
    """Looks like a CUDA array to halcdl (it has __cuda_array_interface__) but is none."""
    __cuda_array_interface__ = {"shape": (32, 32, 3), "typestr": "<f4", "data": (0, False),
                                "version": 3}
    shape = (32, 32, 3)


def test_mixed_host_and_device_images_rejected():
    m = _model()
    batch = make_samples(2, 32, 32, 3, [0, 1], np.random.default_rng(2))
    batch[1] = dict(batch[1], image=_FakeDeviceArray())
    snap = _snapshot(m)
    for call in (lambda: ha.train_dl_model_batch(m, batch), lambda: ha.apply_dl_model(m, batch, [])):
        with pytest.raises(ha.HOperatorError) as e:
            call()
        assert e.value.error_code == 7736
        assert "only GPU" in str(e.value)
    _unchanged(m, snap)


def test_device_images_on_a_cpu_model_rejected():
    m = _model()
    batch = [{"image": _FakeDeviceArray(), "image_label_id": i} for i in (0, 1)]
    snap = _snapshot(m)
    with pytest.raises(ha.HOperatorError) as e:
        ha.train_dl_model_batch(m, batch)
    assert e.value.error_code == 7736  # no CuPy here, or the model is not on the GPU
    _unchanged(m, snap)


# ---------------------------------------------------------------------------------------
# The engine's GPU bookkeeping (engine/model.cpp, the bindings, the operators) against a fake
# CUDA backend: device arenas in host memory, steps that change them in a known way (P -= lr,
# M1 += 1, M2 += 2 with Adam, S += 0.5, loss = the images' mean) and failures on demand
# (fake_fail). A process loads one backend for good, so every test runs in a subprocess.
ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

_FAKE_BACKEND = r"""
// A fake CUDA backend on the host: device arenas in host vectors, steps that change them in a
// known way, and failures on demand (fake_fail), to test Model's host/device bookkeeping.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/device.h"

using namespace halcdl;

namespace {
std::string g_fail;  // the next call of that name throws
int g_count = 1;
long long g_last_adam_t = -1;

bool fail(const char* what) {
  if (g_fail != what) return false;
  g_fail.clear();
  return true;
}

class FakeEngine final : public DeviceEngine {
 public:
  FakeEngine(const Graph& g, int dev, const GpuOptions& o) : g_(g), dev_(dev), opts_(o) {
    P_.assign(g.n_trainable, 0.f);
    M1_.assign(g.n_trainable, 0.f);
    S_.assign(g.n_state, 0.f);
  }
  GpuInfo info() const override { GpuInfo i; i.index = dev_; i.name = "FakeGPU"; return i; }
  void upload(const float* p, const float* s, const float* m1, const float* m2) override {
    if (fail("upload")) HALCDL_THROW(kErrNoGpuMemory, "fake: out of GPU memory");
    if (m2 && M2_.empty()) M2_.assign(g_.n_trainable, 0.f);
    if (p) P_.assign(p, p + g_.n_trainable);
    if (fail("upload_partial")) HALCDL_THROW(kErrCuda, "fake: upload failed half-way");
    if (s) S_.assign(s, s + g_.n_state);
    if (m1) M1_.assign(m1, m1 + g_.n_trainable);
    if (!M2_.empty()) {
      if (m2) M2_.assign(m2, m2 + g_.n_trainable);
      else std::fill(M2_.begin(), M2_.end(), 0.f);
    }
  }
  void download(float* p, float* s, float* m1, float* m2) override {
    if (fail("download")) HALCDL_THROW(kErrCuda, "fake: download failed");
    if (p) std::copy(P_.begin(), P_.end(), p);
    if (s) std::copy(S_.begin(), S_.end(), s);
    if (m1) std::copy(M1_.begin(), M1_.end(), m1);
    if (m2) {
      if (M2_.empty()) std::fill(m2, m2 + g_.n_trainable, 0.f);
      else std::copy(M2_.begin(), M2_.end(), m2);
    }
  }
  void reset_optimizer() override {
    if (fail("reset")) HALCDL_THROW(kErrCuda, "fake: reset failed");
    std::fill(M1_.begin(), M1_.end(), 0.f);
    std::fill(M2_.begin(), M2_.end(), 0.f);
  }
  void set_options(const GpuOptions& o) override {
    if (fail("options")) HALCDL_THROW(kErrCuda, "fake: options failed");
    opts_ = o;
  }
  void set_precision(Precision p) override {
    HALCDL_CHECK(p == Precision::F32, kErrRuntimeUnsupported, "fake: bfloat16 on the GPU is not implemented");
  }
  void release_training_plans() override {}
  float* pinned_images(size_t n) override { if (img_.size() < n) img_.resize(n); return img_.data(); }
  int* pinned_labels(size_t n) override { if (lab_.size() < n) lab_.resize(n); return lab_.data(); }
  float* pinned_weights(size_t n) override { if (w_.size() < n) w_.resize(n); return w_.data(); }
  // P -= lr, M1 += 1, M2 += 2 (Adam), S += 0.5; the loss is the images' mean.
  TrainResult train_step(const float* images, bool, const int*, const float*, int bs, int m, int c, int h, int w,
                         const HParams& hp, int64_t adam_t, uint64_t, const StepHook*) override {
    if (fail("train")) HALCDL_THROW(kErrTrainingFailed, "fake: the loss became nan");
    const size_t n = static_cast<size_t>(bs) * m * c * h * w;
    double sum = 0;
    for (size_t i = 0; i < n; ++i) sum += images[i];
    const bool adam = hp.solver == "adam";
    if (adam && M2_.empty()) M2_.assign(g_.n_trainable, 0.f);
    for (auto& x : P_) x -= hp.learning_rate;
    for (auto& x : M1_) x += 1.f;
    if (adam) for (auto& x : M2_) x += 2.f;
    for (auto& x : S_) x += 0.5f;
    g_last_adam_t = adam_t;
    return {sum / n, sum / n};
  }
  void infer(const float* images, bool, int n, int, int c, int h, int w, float* probs, bool) override {
    if (fail("infer")) HALCDL_THROW(kErrCuda, "fake: infer failed");
    const int k = g_.nodes[g_.output].channels;
    const size_t img = static_cast<size_t>(c) * h * w;
    for (int i = 0; i < n; ++i) {  // probability 1 for class (first pixel value mod k)
      const int win = static_cast<int>(images[i * img]) % k;
      for (int j = 0; j < k; ++j) probs[i * k + j] = j == win ? 1.f : 0.f;
    }
  }
  void infer_segmentation(const float* images, bool, int n, int, int c, int h, int w, int* index,
                          float* conf, bool) override {
    const int k = g_.nodes[g_.output].channels;
    const size_t img = static_cast<size_t>(c) * h * w, hw = static_cast<size_t>(h) * w;
    for (int i = 0; i < n; ++i)
      for (size_t p = 0; p < hw; ++p) {
        index[i * hw + p] = static_cast<int>(images[i * img + p]) % k;
        conf[i * hw + p] = 1.f;
      }
  }
  size_t plan_bytes() const override { return 0; }

 private:
  Graph g_;
  int dev_;
  GpuOptions opts_;
  std::vector<float> P_, M1_, M2_, S_, img_, w_;
  std::vector<int> lab_;
};

int device_count() {
  if (fail("count")) HALCDL_THROW(kErrCuda, "fake: the NVIDIA driver is missing");
  return g_count;
}
GpuInfo device_info(int i) {
  HALCDL_CHECK(i >= 0 && i < g_count, kErrGpuRequired, "fake: GPU ", i, " does not exist");
  if (fail("info")) HALCDL_THROW(kErrCuda, "fake: GPU ", i, " is busy");
  GpuInfo d;
  d.index = i;
  d.name = "FakeGPU " + std::to_string(i);
  d.cc_major = 9;
  d.total_bytes = size_t(1) << 30;
  return d;
}
DeviceEngine* create_engine(const Graph* g, int device, const GpuOptions* o) {
  HALCDL_CHECK(device >= 0 && device < g_count, kErrGpuRequired, "fake: GPU ", device, " does not exist");
  if (fail("create")) HALCDL_THROW(kErrNoGpuMemory, "fake: out of GPU memory");
  return new FakeEngine(*g, device, *o);
}
void run_graph(const RunRequest*, RunResult*) { HALCDL_THROW(kErrRuntimeUnsupported, "fake: no run_graph"); }
}  // namespace

extern "C" {
__attribute__((visibility("default"))) void fake_fail(const char* what) { g_fail = what; }
__attribute__((visibility("default"))) void fake_set_count(int n) { g_count = n; }
__attribute__((visibility("default"))) long long fake_last_adam_t() { return g_last_adam_t; }
__attribute__((visibility("default"))) const CudaApi* halcdl_cuda_api() {
  static const CudaApi api{kCudaAbiVersion, &device_count, &device_info, &create_engine, &run_graph};
  return &api;
}
}
"""

_PRELUDE = """
import copy, ctypes, os, sys, warnings
warnings.simplefilter("ignore")
import numpy as np
sys.path.insert(0, {tests!r})
import halcdl as ha
from halcdl import _native
from halcdl._native import core
from helpers import make_samples
LIB = {lib!r}
core.set_cuda_library_path(LIB)
_native.cuda_library_path = ""  # nothing of NVIDIA's to preload for the fake
fake = ctypes.CDLL(LIB)  # the same handle _core dlopens: its failure switches
fake.fake_last_adam_t.restype = ctypes.c_longlong

def fail(what):
    fake.fake_fail(what.encode())

def model(runtime="cpu", k=2, name="pretrained_dl_classifier_compact.hdl"):
    ha.set_system("seed_rand", 3)
    m = ha.read_dl_model(name)
    ha.set_dl_model_param(m, "image_dimensions", [32, 32, 3])
    ha.set_dl_model_param(m, "class_ids", list(range(k)))
    ha.set_dl_model_param(m, "batch_size", 2)
    if runtime == "gpu":
        ha.set_dl_model_param(m, "runtime", "gpu")
    return m

def batch(seed=0, k=2, n=2):
    return make_samples(n, 32, 32, 3, list(range(k)), np.random.default_rng(seed))

def params(m):
    return {{n: np.asarray(m.core.get_param(n)).copy() for n in m.core.param_names()}}

def snapshot(m):
    st = dict(m.core.get_state())
    return (m.core, m.core.device(), copy.deepcopy(m.params), params(m),
            {{k: np.asarray(v).copy() for k, v in st.items()}})

def assert_unchanged(m, snap, what):
    core_, dev, prm, p, st = snap
    assert m.core is core_, what
    assert m.core.device() == dev, (what, m.core.device(), dev)
    assert m.params == prm, what
    for n, v in params(m).items():
        assert np.array_equal(v, p[n]), (what, n)
    for k, v in m.core.get_state().items():
        assert np.array_equal(np.asarray(v), st[k]), (what, k)

def raises(code, f, what):
    try:
        f()
    except ha.HOperatorError as e:
        assert e.error_code == code, (what, e.error_code, str(e))
        return e
    raise AssertionError(what + ": no error")
"""


@pytest.fixture(scope="module")
def fake_backend(tmp_path_factory):
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None or not (ROOT / "csrc" / "engine" / "device.h").is_file():
        pytest.skip("needs a C++ compiler and the sources (csrc/)")
    d = tmp_path_factory.mktemp("fake_cuda")
    (d / "fake.cpp").write_text(_FAKE_BACKEND)
    lib = d / "libfake_cuda.so"
    # the std::string ABI of _core (a wheel may use the old one): the fake must match it
    abi = int(b"__cxx11" in Path(core.__file__).read_bytes())
    r = subprocess.run([cxx, "-std=c++17", "-O1", "-shared", "-fPIC", f"-I{ROOT / 'csrc'}",
                        f"-D_GLIBCXX_USE_CXX11_ABI={abi}", str(d / "fake.cpp"), "-o", str(lib)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return lib


def _run(code: str, timeout: int = 120) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=timeout)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out.stdout


def _with_fake(lib, body: str, **names) -> str:
    """Runs ``body`` after _PRELUDE, with ``names`` as global constants."""
    consts = "".join(f"{k} = {v!r}\n" for k, v in names.items())
    return _run(_PRELUDE.format(tests=str(TESTS), lib=str(lib)) + consts + textwrap.dedent(body))


def test_fake_gpu_host_reads_follow_the_device(fake_backend, tmp_path):
    """After steps on the GPU every host read (get_param, get_state, write_dl_model, moving
    back, copying from it) sees the device's values; the Adam step count reaches the engine."""
    _with_fake(fake_backend, """
    m = model("gpu")
    assert ha.get_dl_device_param(ha.get_dl_model_param(m, "device")[0], "type") == ["gpu"]
    p0 = params(m)
    ha.set_dl_model_param(m, "solver_type", "adam")
    ha.set_dl_model_param(m, "learning_rate", 0.5)
    for i in range(3):
        b = batch(i)
        r = ha.train_dl_model_batch(m, b)  # the images went through the (pinned) staging
        assert abs(r["total_loss"] - np.mean([s["image"] for s in b])) < 1e-5
        assert fake.fake_last_adam_t() == i + 1
    st = m.core.get_state()
    assert st["adam_t"] == 3 and st["steps"] == 3
    assert np.all(st["m1"] == 3) and np.all(st["m2"] == 6)
    w = m.core.param_names()[0]
    assert np.allclose(m.core.get_param(w), p0[w] - 1.5)
    other = model("cpu")  # core.copy_params_from with the source on the GPU
    copied = other.core.copy_params_from(m.core)
    assert w in copied and np.array_equal(other.core.get_param(w), m.core.get_param(w))
    ha.write_dl_model(m, PATH)
    r = ha.read_dl_model(PATH)
    assert ha.get_dl_model_param(r, "runtime") == ["cpu"]
    pm, pr = params(m), params(r)
    assert all(np.array_equal(pm[n], pr[n]) for n in pm)
    assert np.all(r.core.get_state()["m2"] == 6)
    ha.train_dl_model_batch(m, batch())
    ha.set_dl_model_param(m, "runtime", "cpu")
    assert m.core.device() == -1 and np.all(m.core.get_state()["m1"] == 4)
    """, PATH=str(tmp_path / "g.hdl"))


def test_fake_gpu_failures_change_nothing(fake_backend):
    """Every GPU-related call that raises leaves the model exactly as it was: parameters,
    optimizer state, step counters, device, HALCON parameters."""
    _with_fake(fake_backend, """
    m = model("gpu")
    ha.train_dl_model_batch(m, batch())
    snap = snapshot(m)
    n = m.core.num_trainable_params()
    w = m.core.param_names()[0]
    cases = [
        ("gpu 5", None, 7708, lambda: ha.set_dl_model_param(m, "gpu", 5)),
        ("handle gpu 3", None, 7708,
         lambda: ha.set_dl_model_param(m, "device", ha.DLDevice("gpu", 3, "x"))),
        ("handle gpu -1", None, 7708,
         lambda: ha.set_dl_model_param(m, "device", ha.DLDevice("gpu", -1, "x"))),
        ("no driver", "count", 7709, lambda: ha.set_dl_model_param(m, "gpu", 0)),
        ("new head, no memory", "create", 6021,
         lambda: ha.set_dl_model_param(m, "class_ids", [0, 1, 2])),
        ("new head, upload", "upload", 6021,
         lambda: ha.set_dl_model_param(m, "class_ids", [0, 1, 2])),
        ("new input layer", "create", 6021,
         lambda: ha.set_dl_model_param(m, "image_num_channels", 1)),
        ("bfloat16", None, 7742, lambda: ha.set_dl_model_param(m, "precision", "bfloat16")),
        ("solver reset", "reset", 7709, lambda: ha.set_dl_model_param(m, "solver_type", "adam")),
        ("train", "train", 7720, lambda: ha.train_dl_model_batch(m, batch(1))),
        ("set_param", "upload", 6021,
         lambda: m.core.set_param(w, np.zeros_like(m.core.get_param(w)))),
        ("set_param half-way", "upload_partial", 7709,
         lambda: m.core.set_param(w, np.zeros_like(m.core.get_param(w)))),
        ("set_state", "upload", 6021, lambda: m.core.set_state(
            dict(m.core.get_state(), m1=np.ones(n, np.float32), m2=np.ones(n, np.float32),
                 adam_t=7, steps=99))),
        ("set_state half-way", "upload_partial", 7709, lambda: m.core.set_state(
            dict(m.core.get_state(), m1=np.ones(n, np.float32), steps=99))),
        ("copy_params_from", "upload", 6021,
         lambda: m.core.copy_params_from(model("cpu").core)),
    ]
    for what, failure, code, call in cases:
        if failure:
            fail(failure)
        raises(code, call, what)
        fail("")
        assert_unchanged(m, snap, what)
    fail("download")  # a model whose download fails stays on the GPU
    ha.train_dl_model_batch(m, batch(2))
    raises(7709, lambda: ha.set_dl_model_param(m, "runtime", "cpu"), "to the CPU")
    assert m.core.device() == 0 and ha.get_dl_model_param(m, "runtime") == ["gpu"]
    """)


def test_fake_gpu_new_head_stays_on_the_gpu(fake_backend):
    _with_fake(fake_backend, """
    m = model("gpu")
    ha.train_dl_model_batch(m, batch())
    before = params(m)
    ha.set_dl_model_param(m, "class_ids", [0, 1, 2])
    assert m.core.device() == 0 and ha.get_dl_model_param(m, "runtime") == ["gpu"]
    after = params(m)
    kept = [k for k in after if k in before and after[k].shape == before[k].shape]
    assert kept and all(np.array_equal(after[k], before[k]) for k in kept)
    ha.train_dl_model_batch(m, batch(k=3))
    """)


def test_fake_gpu_legacy_classifier(fake_backend):
    """set_dl_classifier_param is all or nothing, the device included; apply_dl_classifier
    returns host values whatever the model's gpu_outputs says (no CuPy here)."""
    _with_fake(fake_backend, """
    c = ha.read_dl_classifier("pretrained_dl_classifier_compact.hdl")
    ha.set_dl_classifier_param(c, "classes", ["a", "b"])
    ha.set_dl_classifier_param(c, "image_dimensions", [32, 32, 3])
    m = c.model
    for start in ("cpu", "gpu"):
        ha.set_dl_classifier_param(c, "runtime", start)
        snap = snapshot(m)
        other = "gpu" if start == "cpu" else "cpu"
        for names, values in ((["runtime", "batch_size"], [other, -1]),
                              (["gpu", "runtime", "batch_size"], [0, "gpu", -1])):
            raises(1303, lambda: ha.set_dl_classifier_param(c, names, values), str(names))
            assert_unchanged(m, snap, f"{start}: {names}")
    m.params["gpu_outputs"] = "true"  # as read from a file written by write_dl_model
    img = np.full((32, 32, 3), 1.0, np.float32)  # the fake predicts class (first pixel) mod K
    res = ha.apply_dl_classifier([img], c)
    assert ha.get_dl_classifier_result(res, 0, "predicted_classes") == ["b", "a"]
    assert ha.get_dl_classifier_result(res, "all", "confidences") == [1.0]
    assert m.params["gpu_outputs"] == "true"
    """)


def test_fake_gpu_outputs_check_samples_first(fake_backend):
    """gpu_outputs with host images: a bad sample raises the host path's error, not a KeyError."""
    _with_fake(fake_backend, """
    m = model("gpu")
    ha.set_dl_model_param(m, "gpu_outputs", "true")
    raises(7783, lambda: ha.apply_dl_model(m, [{"img": np.zeros((32, 32, 3))}], []), "no image")
    raises(7783, lambda: ha.apply_dl_model(m, [[1, 2]], []), "not a dict")
    raises(7736, lambda: ha.apply_dl_model(m, [{"image": "abc"}], []), "a string")
    """)


def test_fake_gpu_list_skips_a_busy_gpu(fake_backend):
    out = _with_fake(fake_backend, """
    fake.fake_set_count(2)
    fail("info")  # GPU 0 cannot be queried (e.g. another process holds it exclusively)
    print([d.id for d in ha.query_available_dl_devices(["runtime"], ["gpu"])])
    """)
    assert out.strip() == "[1]"


def _stub(path: Path, cxx: str, body: str) -> None:
    src = path.with_suffix(".c")
    src.write_text(body)
    subprocess.run([cxx, "-x", "c", "-shared", "-fPIC", f"-Wl,-soname,{path.name}", str(src),
                    "-o", str(path)], check=True, capture_output=True, timeout=120)


# (names no system has: a real libcudart would be found in the loader's cache)
@pytest.mark.parametrize("case, code", [("libcudnn_halcdl_test.so.9", 7718),
                                        ("libcublasLt_halcdl_test.so.13", 7717),
                                        ("libcudart_halcdl_test.so.13", 7709),
                                        ("cudnn_symbol", 7718), ("itself", 7709)])
def test_cuda_library_load_errors(fake_backend, tmp_path, case, code):
    """A backend that cannot be loaded raises the code of what is missing (a library, or a
    symbol of a too old one); the failure is remembered until set_cuda_library_path is
    called again, which retries."""
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    lib = tmp_path / "libhalcdl_cuda.so"
    abi = int(b"__cxx11" in Path(core.__file__).read_bytes())
    build = [cxx, "-std=c++17", "-shared", "-fPIC", f"-I{ROOT / 'csrc'}",
             f"-D_GLIBCXX_USE_CXX11_ABI={abi}", str(fake_backend.with_name("fake.cpp")),
             "-o", str(lib)]
    dep = tmp_path / ("libcudnn_halcdl_test.so.9" if case == "cudnn_symbol" else case)
    sym = "cudnnFakeSymbol" if case == "cudnn_symbol" else "halcdl_stub_symbol"
    good = tmp_path / "good.so"
    if case != "itself":  # the backend needs dep (and its symbol)
        _stub(dep, cxx, f"int {sym}(void) {{ return 1; }}\n")
        dep.rename(good)
        _stub(dep, cxx, f"int {sym}(void) {{ return 1; }}\n")
        caller = tmp_path / "caller.cpp"
        caller.write_text(f'extern "C" int {sym}();\n'
                          f'extern "C" int fake_use() {{ return {sym}(); }}\n')
        build += [str(caller), "-Wl,--no-as-needed", str(dep), f"-Wl,-rpath,{tmp_path}"]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    if case == "itself":
        lib.rename(good)
    elif case == "cudnn_symbol":
        _stub(dep, cxx, "int cudnnOther(void) { return 1; }\n")
    else:
        dep.unlink()
    repaired = lib if case == "itself" else dep
    out = _run(f"""
import shutil
import halcdl as ha
from halcdl._native import core
core.set_cuda_library_path({str(lib)!r})
for attempt in range(2):  # the failure is remembered
    try:
        core.load_cuda()
        print("loaded")
    except ha.HOperatorError as e:
        print(e.error_code, str(e).replace(chr(10), " "))
print(ha.query_available_dl_devices(["runtime"], ["gpu"]))
shutil.copyfile({str(good)!r}, {str(repaired)!r})
core.set_cuda_library_path({str(lib)!r})
core.load_cuda()
print("retry loaded", core.gpu_device_count())
""")
    lines = out.splitlines()
    assert lines[0].startswith(f"{code} ") and lines[1] == lines[0], out
    assert lines[2] == "[]", out
    assert lines[3] == "retry loaded 1", out
    what = {"itself": "reinstall halcdl", "cudnn_symbol": "cudnnFakeSymbol"}.get(case, case)
    assert what in lines[0], out


def test_run_op_gpu_checks_grad_output_size():
    """The GPU twin reads one gradient value per output element: a short grad_output is
    7735 (as on the CPU), never a read past its end."""
    x = np.zeros((1, 2, 3, 3), np.float32)
    relu = {"name": "op", "op": "relu", "inputs": ["in0"]}
    for device in (-1, 0):
        with pytest.raises(ha.HOperatorError) as e:
            core.run_op(relu, [x], {}, np.zeros(3, np.float32), True, device=device)
        assert e.value.error_code == 7735, e.value


def test_no_deadlock_between_a_step_and_another_thread():
    """train_step / infer / set_device hold the model's mutex without the GIL; another
    thread's call on the same engine model must wait for the mutex without the GIL."""
    code = textwrap.dedent("""
    import threading, warnings
    warnings.simplefilter("ignore")
    import numpy as np
    import halcdl as ha
    m = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    ha.set_dl_model_param(m, "image_dimensions", [96, 96, 3])
    ha.set_dl_model_param(m, "class_ids", [0, 1])
    rng = np.random.default_rng(0)
    batch = [{"image": rng.random((96, 96, 3), dtype=np.float32), "image_label_id": i % 2}
             for i in range(16)]
    core = m.core
    name = core.param_names()[0]
    def steps():
        for _ in range(3):
            core.train_step(batch, 16, 1, 96, 96, 3)
            core.infer(batch, 16, 96, 96, 3)
    t = threading.Thread(target=steps)
    t.start()
    while t.is_alive():
        core.get_param(name)
        core.get_state()
    t.join()
    print("done")
    """)
    try:
        out = _run(code, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("deadlock: a binding waits for the model's mutex while holding the GIL")
    assert "done" in out
