"""End to end on real data: the compact classifier, trained only through the public
operators on scikit-learn's bundled digits, reaches >= 97 % accuracy on a stratified,
held-out 20 % split.

Digits are 8x8 (0..16); they are upscaled to 32x32 (bilinear), mapped to -127..128 and
given 3 channels, i.e. preprocessed the way the pretrained classifiers expect. Training:
SGD with momentum, shuffled every epoch, learning rate / 10 for the last quarter. Fixed
seeds (halcdl's seed_rand, numpy) make the run reproducible. The elapsed time is printed
(speed is never asserted); the target on 2 cores is < 3 minutes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from skimage.transform import resize
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import halcdl as ha

SIZE = 32
EPOCHS = 12
BATCH = 32
LR = 0.01
SEED = 42
TARGET = 0.97
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_split(size=SIZE):
    d = load_digits()
    imgs = np.stack([resize(im / 16.0, (size, size), order=1, anti_aliasing=False)
                     for im in d.images]).astype(np.float32) * 255.0 - 127.0
    imgs = np.repeat(imgs[..., None], 3, axis=-1)
    tr, te = train_test_split(np.arange(len(imgs)), test_size=0.2, stratify=d.target,
                              random_state=0)
    mk = lambda idx: [{"image": imgs[i], "image_label_id": int(d.target[i])} for i in idx]  # noqa
    return mk(tr), mk(te)


def test_split_is_stratified_and_scaled():
    train, test = load_split()
    assert len(train) + len(test) == 1797 and len(test) == 360
    counts = np.bincount([s["image_label_id"] for s in test], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37, counts
    im = train[0]["image"]
    assert im.shape == (SIZE, SIZE, 3) and im.dtype == np.float32
    assert im.min() >= -127.0 and im.max() <= 128.0


def train_and_evaluate(train, test, precision="float32"):
    """Trains compact on the digits split through the operators; returns (accuracy, first
    loss, last mean loss, seconds)."""
    t0 = time.perf_counter()
    ha.set_system("seed_rand", SEED)
    model = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    ha.set_dl_model_param(model, "image_dimensions", [SIZE, SIZE, 3])
    ha.set_dl_model_param(model, "class_ids", list(range(10)))
    ha.set_dl_model_param(model, "batch_size", BATCH)
    ha.set_dl_model_param(model, "learning_rate", LR)
    ha.set_dl_model_param(model, "momentum", 0.9)
    ha.set_dl_model_param(model, "weight_prior", 1e-4)
    ha.set_dl_model_param(model, "precision", precision)
    rng = np.random.default_rng(SEED)
    steps = len(train) // BATCH
    first_loss = last_loss = None
    for epoch in range(EPOCHS):
        if epoch == int(0.75 * EPOCHS):
            ha.set_dl_model_param(model, "learning_rate", LR / 10)
        order = rng.permutation(len(train))
        losses = []
        for s in range(steps):
            r = ha.train_dl_model_batch(model, [train[i] for i in order[s * BATCH:(s + 1) * BATCH]])
            losses.append(float(np.ravel(r["total_loss"])[0]))
        first_loss = first_loss if first_loss is not None else losses[0]
        last_loss = float(np.mean(losses))
        print(f"{precision} epoch {epoch + 1}: mean loss {last_loss:.4f} "
              f"({time.perf_counter() - t0:.1f} s)")
    results = ha.apply_dl_model(model, test, [])
    acc = np.mean([r["classification_class_ids"][0] == s["image_label_id"]
                   for r, s in zip(results, test)])
    return float(acc), first_loss, last_loss, time.perf_counter() - t0


@pytest.mark.slow
def test_compact_learns_digits():
    train, test = load_split()
    acc, first_loss, last_loss, elapsed = train_and_evaluate(train, test)
    print(f"digits: test accuracy {100 * acc:.2f} % in {elapsed:.1f} s "
          f"({ha.get_system_s('thread_num')} threads)")
    assert last_loss < first_loss
    assert acc >= TARGET, f"test accuracy {acc:.4f} < {TARGET}"


@pytest.mark.slow
def test_example_script_runs(tmp_path):
    """The README's main job, shortened to 1 epoch: runs, prints the accuracy, writes only
    into --out."""
    out = tmp_path / "out"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = dict(os.environ)
    # the subprocess imports the same halcdl as this process
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(ha.__file__)))
    env["PYTHONPATH"] = pkg_parent + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "train_digits.py"), "--epochs", "1",
         "--out", str(out)], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "test accuracy:" in proc.stdout, proc.stdout
    assert list(cwd.iterdir()) == [], "the example wrote into the working directory"
    summary = json.loads((out / "train_digits.json").read_text())
    assert 0.0 <= summary["test_accuracy"] <= 1.0
