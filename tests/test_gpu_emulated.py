"""tests/test_gpu.py on the EMULATED GPU backend (tests/gpu_emu), so that the CUDA backend's host
code — plan building, NHWC layouts, buffer lifetimes, gradient routing, the engine's train step,
device switching, out-of-memory handling, error mapping, the Python integration — runs in CI,
where there is no GPU.

tests/gpu_emu/build.py compiles the real csrc/cuda/*.cpp unchanged against the real CUDA, cuDNN
and cuBLAS headers and links them with fake libraries (host memory, reference math) and with
kernels.cu on the kernel emulator (tests/cuda_emu) into libhalcdl_cuda_emu.so; _core loads it as
its CUDA backend when HALCDL_CUDA_LIBRARY names it (python/halcdl/_native.py). A process can load
only one backend, so everything here runs in subprocesses. Skipped (not failed) where g++, the
headers (nvidia-cudnn-cu13, nvidia-cublas, the CUDA toolkit's cuda_runtime_api.h) or csrc/ are
missing.

What runs of test_gpu.py (``EMULATED_SUBSET``) and what does not, and why:
  run:  every op twin (forward/backward, train/infer) and dropout; the compact classifier's
        SGD and Adam train sequences; segmentation; determinism on mobilenet_v2; the CuPy tests
        (device images and device outputs) on a fake CuPy whose arrays live in the emulated
        GPU's memory (tests/gpu_emu/fake_cupy, first on the subprocess's PYTHONPATH); the legacy
        classifier; object detection (the detection_output op, 3 train steps of a tiny
        rectangle1 detector with SGD and Adam and apply_dl_model vs the CPU, the same for rectangle2
        with and without orientation classes and ignore_direction, the refusals);
        device switching; write/read; out of GPU memory then a smaller batch (with a
        2 GiB emulated GPU); the GPU index out of range; the device parameters.
  left out:
    - test_train_sequence_matches_cpu[resnet18-*]: ~45 s emulated; compact covers the path.
      (These sequences first ran at SGD lr 0.01 / Adam 1e-3, where 5 steps from a random init
      are chaotic: a 1e-7 relative nudge of the initial weights moved the CPU's own step-4 loss
      by 5e-3. The emulation found that; test_gpu.py now uses 1e-3 / 1e-4.)
    - test_deterministic_runs_are_bit_identical[resnet18]: ~22 s; mobilenet_v2 exercises the
      same path (deterministic algorithms, TF32 on).
Also test_gpu_selection.py with the backend loaded, on a machine without a driver (7709) or
without a GPU (7708) (fake_cudart.cpp: HALCDL_EMU_NO_DRIVER, HALCDL_EMU_NO_DEVICE), where plain
CI only has a build without a backend (7742). Plus scenarios test_gpu.py cannot express
(tests/gpu_emu/scenarios.py): no cudaMalloc in a warm train step or inference and no device
memory left by a deleted model (the fake runtime counts); a missing driver → 7709; a model
larger than the GPU → 6021 with the model left on the CPU; every cudaMalloc of a move to the GPU
and of the cold train steps failing in turn (6021, nothing changes, the retried run is bitwise
the same); reconfiguration mid-training (batch size, optimize_for_inference, determinism, image
size, GPU → CPU → GPU) against the CPU; two models trained from two threads at once; weights
that blow up (7720 at the CPU's step, nothing changed; HALCDL_CUDA_DEBUG=2 names the node); the
batch-size searches (optimize_dl_model_batch_size, set_dl_model_param_max_gpu_batch_size) on a
96 MiB GPU without CuPy: the bound is the free memory with the scratch copy placed, it bites,
and the chosen size trains.

Environment: HALCDL_EMU_BUILD_DIR (the build cache), CXX; see tests/gpu_emu/build.py.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _load_build():
    spec = importlib.util.spec_from_file_location("halcdl_gpu_emu_build", os.path.join(HERE, "gpu_emu", "build.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


build = _load_build()
_ok, _why = build.available()
pytestmark = pytest.mark.skipif(not _ok, reason=f"emulated GPU backend unavailable: {_why}")

# test_gpu.py tests run on the emulation (see the module docstring for what is left out and why)
EMULATED_SUBSET = "not resnet18"
FAKE_CUPY = os.path.join(HERE, "gpu_emu", "fake_cupy")
# one test of each kind that must be among those that ran (guards the -k expression)
MUST_RUN = [
    "test_op_matches_cpu[conv0-train]", "test_op_matches_cpu[bn(4, 5, 6, 7)-train]",
    "test_op_matches_cpu[fc4d-train]", "test_op_matches_cpu[maxpool-infer]", "test_dropout[0.5]",
    "test_op_matches_cpu[sigmoid-train]", "test_op_matches_cpu[d2s_dcr-train]",
    "test_op_matches_cpu[resize_bilinear-train]", "test_op_matches_cpu[permute_cwh-train]",
    "test_op_matches_cpu[reshape-train]", "test_op_matches_cpu[depth_max-train]",
    "test_op_matches_cpu[depth_argmax-train]", "test_op_matches_cpu[lrn-train]",
    "test_op_matches_cpu[reduce_l2_cw-train]", "test_op_matches_cpu[reduce_mean_hw-train]",
    "test_op_matches_cpu[matmul-train]", "test_op_matches_cpu[matmul_tt-train]",
    "test_train_sequence_matches_cpu[pretrained_dl_classifier_compact.hdl-adam]",
    "test_train_sequence_matches_cpu[pretrained_dl_classifier_compact.hdl-sgd]",
    "test_segmentation_matches_cpu",
    "test_deterministic_runs_are_bit_identical[pretrained_dl_classifier_mobilenet_v2.hdl]",
    "test_legacy_classifier_on_gpu", "test_device_switch_continues_training", "test_write_read_from_gpu",
    "test_out_of_memory_then_smaller_batch", "test_gpu_index_out_of_range", "test_device_params",
    "test_cupy_images_used_in_place", "test_cupy_on_a_non_blocking_stream", "test_cupy_images_with_nan_rejected",
    "test_mixed_host_and_device_images_rejected", "test_segmentation_gpu_outputs_from_host_images",
    "test_op_matches_cpu[detection_output-train]", "test_detection_train_and_apply_match_cpu[sgd]",
    "test_detection_train_and_apply_match_cpu[adam]", "test_detection_gpu_refusals_leave_the_model_unchanged",
    "test_detection_rectangle2_matches_cpu[oriented]", "test_detection_rectangle2_matches_cpu[no_orientation]",
    "test_detection_rectangle2_matches_cpu[ignore_direction]",
    # precision 'bfloat16'
    "test_bf16_op_matches_cpu[conv0-train]", "test_bf16_op_matches_cpu[deconv1-train]",
    "test_bf16_op_matches_cpu[bn(4, 5, 6, 7)-train]", "test_bf16_op_matches_cpu[fc4d-train]",
    "test_bf16_op_matches_cpu[softmax-train]", "test_bf16_op_matches_cpu[up_bilinear-train]",
    "test_bf16_dropout_uses_the_fp32_mask",
    "test_bf16_segmentation_close_to_fp32", "test_bf16_train_sequence_close_to_fp32[sgd]", "test_bf16_train_sequence_close_to_fp32[adam]",
    "test_bf16_write_read_and_precision_switch", "test_bf16_listed_in_device_precisions",
]
TIMEOUT = 900  # seconds per subprocess; the whole subset takes ~1 min on 2 cores


@pytest.fixture(scope="module")
def emu_lib() -> str:
    return build.build()


def _env(lib: str, **extra: str) -> dict:
    env = dict(os.environ)
    for k in ("HALCDL_TEST_NO_GPU", "HALCDL_EMU_NO_DRIVER", "HALCDL_EMU_NO_DEVICE", "HALCDL_EMU_GPU_MEMORY",
              "HALCDL_CUDA_DEBUG"):
        env.pop(k, None)
    env["HALCDL_CUDA_LIBRARY"] = lib
    # the halcdl this process imports (an in-place build under python/ or the installed one)
    spec = importlib.util.find_spec("halcdl")
    if spec and spec.submodule_search_locations:
        pkg_parent = os.path.dirname(list(spec.submodule_search_locations)[0])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def _tail(r: subprocess.CompletedProcess, n: int = 12000) -> str:
    return ("--- stdout ---\n" + r.stdout[-n:] + "\n--- stderr ---\n" + r.stderr[-n:])


def _pytest(lib: str, test_file: str, tmp_path, *args: str, **env: str):
    """Runs tests/<test_file> on the emulated backend; (passed, failed, skipped) test names."""
    report = tmp_path / (test_file + ".xml")
    cmd = [sys.executable, "-m", "pytest", os.path.join(HERE, test_file), "-q", "-p", "no:cacheprovider",
           f"--junitxml={report}", "-o", "junit_family=xunit1", *args]
    r = subprocess.run(cmd, cwd=ROOT, env=_env(lib, **env), capture_output=True, text=True, timeout=TIMEOUT)
    assert report.exists(), "pytest wrote no report\n" + _tail(r)
    ran, failed, skipped = [], [], []
    for c in ET.parse(report).getroot().iter("testcase"):
        name = c.get("name")
        if c.find("skipped") is not None:
            skipped.append(name)
        elif c.find("failure") is not None or c.find("error") is not None:
            failed.append(name)
        else:
            ran.append(name)
    assert not failed and r.returncode == 0, (f"{len(failed)} of {len(failed) + len(ran)} {test_file} tests fail on "
                                              f"the emulated GPU: {failed}\n" + _tail(r))
    assert not skipped, f"skipped on the emulated GPU: {skipped}\n" + _tail(r)
    return ran


def test_test_gpu_runs_on_the_emulation(emu_lib, tmp_path):
    # 2 GiB: test_out_of_memory_then_smaller_batch asks for 2x the GPU's memory in one batch.
    # The fake CuPy (device arrays in the emulated GPU's memory) runs the CuPy tests.
    env = _env(emu_lib)
    ran = _pytest(emu_lib, "test_gpu.py", tmp_path, "-k", EMULATED_SUBSET, HALCDL_EMU_GPU_MEMORY="2G",
                  PYTHONPATH=os.pathsep.join(p for p in (FAKE_CUPY, env.get("PYTHONPATH", "")) if p))
    missing = [t for t in MUST_RUN if t not in ran]
    assert not missing, f"did not run: {missing}"


@pytest.mark.parametrize("machine", ["HALCDL_EMU_NO_DRIVER", "HALCDL_EMU_NO_DEVICE"])
def test_gpu_selection_with_the_backend_loaded(emu_lib, tmp_path, machine):
    """test_gpu_selection.py (a GPU request fails with the right code and loses nothing) with a
    CUDA backend that loads — a machine without a driver (7709) or without a GPU (7708) —
    where plain CI only has a build without one (7742)."""
    ran = _pytest(emu_lib, "test_gpu_selection.py", tmp_path, **{machine: "1"})
    assert "test_runtime_gpu_fails_cleanly[runtime]" in ran


@pytest.mark.parametrize("scenario, env", [
    pytest.param("warm_step_no_malloc", {}, id="warm_step_no_malloc"),
    pytest.param("no_driver", {"HALCDL_EMU_NO_DRIVER": "1"}, id="no_driver"),
    pytest.param("upload_oom", {"HALCDL_EMU_GPU_MEMORY": "16M"}, id="upload_oom"),
    pytest.param("malloc_fault_sweep", {}, id="malloc_fault_sweep"),
    pytest.param("reconfigure_and_move", {}, id="reconfigure_and_move"),
    pytest.param("two_threads", {}, id="two_threads"),
    pytest.param("nonfinite_step", {}, id="nonfinite_step"),
    pytest.param("nonfinite_step", {"HALCDL_CUDA_DEBUG": "2"}, id="nonfinite_step-debug"),
    pytest.param("batch_size_search", {"HALCDL_EMU_GPU_MEMORY": "96M"}, id="batch_size_search"),
    pytest.param("train_sequence_sgd", {}, id="train_sequence_sgd"),
    pytest.param("train_sequence_adam", {}, id="train_sequence_adam"),
])
def test_scenario(emu_lib, scenario, env):
    r = subprocess.run([sys.executable, os.path.join(HERE, "gpu_emu", "scenarios.py"), scenario], cwd=ROOT,
                       env=_env(emu_lib, **env), capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0 and f"OK {scenario}" in r.stdout, _tail(r)
