"""Device selection where there is no usable GPU (CI): the request fails with the HALCON
error that says why, and loses nothing.  (The GPU itself is tested in test_gpu.py.)

- a build without the CUDA backend → 7742;
- a CUDA-enabled build on a machine without a driver → 7709, without a GPU → 7708;
- cuDNN / cuBLAS missing → 7718 / 7717.
"""
from __future__ import annotations

import os
import subprocess
import sys

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
