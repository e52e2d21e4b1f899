"""The halcdl command line (issue 13): train on a folder of PNGs made from scikit-image's
bundled images, the files it writes, the plot opened with Pillow, evaluate / predict / info,
and one-line errors with exit code != 0 and no traceback.

Runs ``halcdl.cli.main(argv)`` in-process (the console script and ``python -m halcdl`` call
the same function; one subprocess test checks ``python -m halcdl``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

import halcdl as ha
from halcdl import cli

from halcdl.workflow import display as disp
from halcdl.workflow import evaluate as ev
from halcdl.workflow import train as tr
from test_schedules import make_dataset, make_model, reader, tparam  # noqa: F401

skdata = pytest.importorskip("skimage.data")


def _tiles(img: np.ndarray, n: int, size: int, rng) -> list[np.ndarray]:
    h, w = img.shape[:2]
    out = []
    for _ in range(n):
        r, c = rng.integers(0, h - size), rng.integers(0, w - size)
        out.append(img[r:r + size, c:c + size])
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes (camera: gray, coffee and chelsea: color), 10 tiles of 48×48 each, as PNG;
    the gray class has 1-channel files, so the folder mixes mono and color images."""
    pytest.importorskip("halcdl.workflow.preprocess")
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("camera", "coffee", "chelsea"):
        img = getattr(skdata, name)()
        os.makedirs(root / name)
        for i, t in enumerate(_tiles(img, 10, 48, rng)):
            Image.fromarray(np.ascontiguousarray(t)).save(root / name / f"{name}_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def trained(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rc = cli.main(["train", str(folder), "--epochs", "2", "--image-size", "24",
                   "--batch-size", "4", "--out", str(out), "--seed", "3", "--quiet",
                   "--learning-rate", "0.01"])
    assert rc == 0
    return out


def test_train_writes_the_files(trained):
    for f in ("model_best.hdl", "model_final.hdl", "model_best_info.hdict",
              "training_plot.png", "train_log.jsonl", "evaluation.json",
              "confusion_matrix.png"):
        assert os.path.isfile(trained / f), f
    with Image.open(trained / "training_plot.png") as im:
        im.load()
        assert im.size[0] >= 600 and im.size[1] >= 500
        a = np.asarray(im.convert("RGB"))
    assert a.std() > 10  # not a blank canvas
    with Image.open(trained / "confusion_matrix.png") as im:
        im.load()
    records = [json.loads(line) for line in open(trained / "train_log.jsonl")]
    kinds = {r["type"] for r in records}
    assert kinds == {"iteration", "train_info", "evaluation"}
    its = [r for r in records if r["type"] == "iteration"]
    assert [r["iteration"] for r in its] == list(range(1, len(its) + 1))
    assert all("learning_rate" in r for r in its)
    evals = [r for r in records if r["type"] == "evaluation"]
    assert [e["epoch"] for e in evals] == [1.0, 2.0]
    summary = json.load(open(trained / "evaluation.json"))
    assert summary["split"] == "test" and 0 <= summary["measures"]["top1_error"] <= 1
    cm = np.asarray(summary["absolute_confusion_matrix"])
    ds = ha.read_dict(str(trained / "data" / "dl_dataset.hdict"), [], [])
    n_test = sum(1 for s in ds["samples"] if s["split"] == "test")
    assert cm.shape == (3, 3) and cm.sum() == n_test > 0
    m = ha.read_dl_model(str(trained / "model_final.hdl"))
    assert ha.get_dl_model_param(m, "class_names") == ["camera", "chelsea", "coffee"]
    assert ha.get_dl_model_param_s(m, "image_width") == 24


@pytest.mark.slow
def test_same_seed_same_model(folder, trained, tmp_path):
    rc = cli.main(["train", str(folder), "--epochs", "2", "--image-size", "24",
                   "--batch-size", "4", "--out", str(tmp_path), "--seed", "3", "--quiet",
                   "--learning-rate", "0.01"])
    assert rc == 0
    a = ha.read_dl_model(str(trained / "model_final.hdl"))
    b = ha.read_dl_model(str(tmp_path / "model_final.hdl"))
    for n in a.core.param_names():
        assert np.array_equal(np.array(a.core.get_param(n)), np.array(b.core.get_param(n)))


@pytest.mark.slow
def test_train_from_hdict_with_early_stopping(trained, tmp_path):
    """The preprocessed dataset file of a run trains again without re-preprocessing."""
    src = trained / "data" / "dl_dataset.hdict"
    rc = cli.main(["train", str(src), "--epochs", "30", "--image-size", "24", "--out",
                   str(tmp_path), "--quiet", "--learning-rate", "0", "--early-stopping", "1",
                   "--batch-size", "8"])
    assert rc == 0
    assert not os.path.exists(tmp_path / "data")  # the file's samples were used as they are
    summary = json.load(open(tmp_path / "evaluation.json"))
    # lr 0, but batch-norm statistics still move: it stops once an evaluation is no better
    assert summary["epochs"] < 30 and "early stopping" in summary["stop_reason"]
    best, final = (ha.read_dl_model(str(tmp_path / f)) for f in ("model_best.hdl",
                                                                  "model_final.hdl"))
    for n in best.core.param_names():
        assert np.array_equal(np.array(best.core.get_param(n)),
                              np.array(final.core.get_param(n)))


@pytest.mark.slow
def test_resume_continues(folder, tmp_path):
    args = ["train", str(folder), "--image-size", "24", "--batch-size", "4", "--out",
            str(tmp_path), "--seed", "3", "--quiet", "--learning-rate", "0.01"]
    assert cli.main(args + ["--epochs", "1"]) == 0
    assert cli.main(args + ["--epochs", "2", "--resume"]) == 0
    info = ha.read_dict(str(tmp_path / "model_final_info.hdict"), [], [])
    assert info["epoch"] == 2.0


def test_evaluate_predict_info(trained, folder, capsys):
    model = str(trained / "model_best.hdl")
    assert cli.main(["evaluate", model, str(folder), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0 <= out["measures"]["top1_error"] <= 1
    images = [str(folder / "coffee" / "coffee_00.png"), str(folder / "camera" / "camera_01.png")]
    assert cli.main(["predict", model] + images + ["--json", "--top", "3"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in rows] == images
    for r in rows:
        assert sorted(r["class_names"]) == ["camera", "chelsea", "coffee"]
        assert abs(sum(r["confidences"]) - 1) < 1e-4
    # the table agrees with apply_dl_model on the same preprocessed images
    assert cli.main(["predict", model] + images) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["image", "class", "confidence"]
    assert table[1].split()[1] == rows[0]["class_names"][0]
    assert cli.main(["info", model]) == 0
    text = capsys.readouterr().out
    assert "image_width" in text and "camera" in text and "conv1" in text
    assert cli.main(["info", model, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params"]["image_width"] == 24 and info["class_names"][0] == "camera"


def _err(capsys, argv):
    rc = cli.main(argv)
    err = capsys.readouterr().err
    assert rc != 0
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("halcdl: error:"), err
    assert "Traceback" not in err
    return lines[0]


def test_errors_are_one_line(folder, tmp_path, capsys):
    assert "not found" in _err(capsys, ["train", str(tmp_path / "nope"), "--out",
                                        str(tmp_path / "o")])
    bad = tmp_path / "bad"
    (bad / "a").mkdir(parents=True)
    (bad / "b").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(bad / "a" / "x.png")
    assert "holds no images" in _err(capsys, ["train", str(bad), "--out",
                                              str(tmp_path / "o")])
    (bad / "b" / "y.png").write_bytes(b"not a png at all")
    line = _err(capsys, ["train", str(bad), "--out", str(tmp_path / "o")])
    assert "unreadable image" in line and "y.png" in line
    assert "unknown model" in _err(capsys, ["train", str(folder), "--model", "huge",
                                            "--out", str(tmp_path / "o")])
    assert "unknown model" in _err(capsys, ["info", "no_such.hdl"])
    assert "not found" in _err(capsys, ["predict", "compact", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit) as e:
        cli.main(["train", str(folder), "--batch-size", "zero"])
    assert e.value.code == 2
    assert "batch size" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["train", str(folder), "--image-size", "3x4x5"])
    assert e.value.code == 2
    assert not os.path.exists(tmp_path / "o")  # nothing written on failure


def test_sample_images(tmp_path, capsys):
    assert cli.main(["sample-images", str(tmp_path / "im"), "--per-class", "3",
                     "--size", "16"]) == 0
    for name in cli.SAMPLE_IMAGES:
        files = sorted(os.listdir(tmp_path / "im" / name))
        assert len(files) == 3
        with Image.open(tmp_path / "im" / name / files[0]) as im:
            assert im.size == (16, 16)
    # the brick tiles are cut from skimage's brick at the seeded positions
    rng = np.random.default_rng(0)
    cam = skdata.brick()
    r, c = int(rng.integers(0, cam.shape[0] - 15)), int(rng.integers(0, cam.shape[1] - 15))
    got = np.asarray(Image.open(tmp_path / "im" / "brick" / "brick_000.png"))
    assert np.array_equal(got, cam[r:r + 16, c:c + 16])
    assert "not empty" in _err(capsys, ["sample-images", str(tmp_path / "im")])


def test_python_dash_m(tmp_path):
    from helpers import halcdl_path
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([halcdl_path(), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-m", "halcdl", "info", "compact"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "image_width" in p.stdout
    p = subprocess.run([sys.executable, "-m", "halcdl", "info", "nothing_here"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and p.stderr.startswith("halcdl: error: unknown model")


# --------------------------------------------------------------------------------------------
# enable_display 'true': progress bar, plot, confusion matrix, predictions, JSON-lines log
# --------------------------------------------------------------------------------------------
def test_display_files_and_log_match_the_infos(reader, tmp_path, capsys):  # noqa: F811
    ds = make_dataset()
    m = make_model()
    tp = ha.create_dl_train_param(m, 3, 1, "true", 1, ["serialize", "display"],
                                  [[], {"output_dir": str(tmp_path / "d"), "num_images": 3,
                                        "plot_params": ["learning_rate", "momentum"]}])
    _, infos, evals = tr.run_training(ds, m, tp, 0)
    d = tmp_path / "d"
    records = [json.loads(line) for line in open(d / disp.LOG_FILE)]
    logged_infos = [r for r in records if r["type"] == "train_info"]
    assert [r["iteration"] for r in logged_infos] == [i["iteration"] for i in infos]
    assert [r["mean_loss"] for r in logged_infos] == pytest.approx(
        [i["mean_loss"] for i in infos], rel=1e-12)
    logged_evals = [r for r in records if r["type"] == "evaluation"]
    assert [r["comparison_value"] for r in logged_evals] == [e["comparison_value"]
                                                            for e in evals]
    # the logged confusion matrix is HALCON's (rows = predicted), as evaluate_dl_model's
    for r, e in zip(logged_evals, evals):
        assert r["result"]["absolute_confusion_matrix"] == \
            np.asarray(e["result"]["absolute_confusion_matrix"]).tolist()
    its = [r for r in records if r["type"] == "iteration"]
    assert len(its) == 3 * 4 and all(r["momentum"] == 0.9 for r in its)
    for f in (disp.PLOT_FILE, disp.CONFUSION_FILE, disp.PREDICTIONS_FILE,
              "confusion_matrix_1.png", "confusion_matrix_3.png"):
        with Image.open(d / f) as im:
            im.load()
    err = capsys.readouterr().err
    assert "training" in err and "12/12" in err  # the tqdm bar reached the end


def test_display_without_output_dir_writes_nothing(reader, tmp_path, monkeypatch):  # noqa
    monkeypatch.chdir(tmp_path)
    ds = make_dataset()
    m = make_model()
    tp = ha.create_dl_train_param(m, 1, 1, "true", 1, ["serialize"], [[]])
    tr.run_training(ds, m, tp, 0)
    assert os.listdir(tmp_path) == []


def test_display_resume_keeps_the_log(reader, tmp_path):  # noqa: F811
    ds = make_dataset()
    out = str(tmp_path / "d")
    ser = [{"type": "current", "basename": str(tmp_path / "cur")}]
    m = make_model()
    tp = ha.create_dl_train_param(m, 2, 1, "true", 1, ["serialize", "display"],
                                  [ser, {"output_dir": out, "progress": "none"}])
    tr.run_training(ds, m, dict(tp, num_epochs=1), 0)
    tr.run_training(ds, make_model(), tp, "resume")
    its = [json.loads(x) for x in open(os.path.join(out, disp.LOG_FILE))]
    its = [r["iteration"] for r in its if r["type"] == "iteration"]
    assert its == list(range(1, 9))


def test_display_segmentation_predictions(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    ha.set_system("seed_rand", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = ha.read_dl_model("pretrained_dl_segmentation_compact.hdl")
    ha.set_dl_model_param(m, "image_dimensions", [16, 16, 3])
    ha.set_dl_model_param(m, "class_ids", [0, 4, 2])
    ha.set_dl_model_param(m, "batch_size", 2)
    samples = []
    for i in range(8):
        seg = rng.choice([0, 4, 2], (16, 16)).astype(np.uint8)
        samples.append({"image_id": i, "split": "train" if i < 4 else "validation",
                        "segmentation_image": seg,
                        "_image": rng.normal(0, 50, (16, 16, 3)).astype(np.float32)})
    ds = {"class_ids": [0, 4, 2], "class_names": ["a", "b", "c"], "samples": samples}

    def read(dldataset, indices):
        return [{"image": samples[i]["_image"].copy(), "image_id": i,
                 "segmentation_image": samples[i]["segmentation_image"].copy()}
                for i in indices]

    monkeypatch.setattr(ev, "read_samples", read)
    tp = ha.create_dl_train_param(m, 1, 1, "true", 1, ["serialize", "display"],
                                  [[], {"output_dir": str(tmp_path), "progress": "none",
                                        "num_images": 3}])
    tr.run_training(ds, m, tp, 0)
    with Image.open(tmp_path / disp.PREDICTIONS_FILE) as im:
        im.load()
        assert im.size[0] >= 3 * 200 and im.size[1] >= 3 * 200  # 3 rows of 3 panels
    assert not os.path.exists(tmp_path / disp.CONFUSION_FILE)
    rec = [json.loads(x) for x in open(tmp_path / disp.LOG_FILE)]
    assert any(r["type"] == "evaluation" and "mean_iou" in r["measures"] for r in rec)


@pytest.mark.parametrize("bad", [{"progress": "fancy"}, {"plot": "maybe"},
                                 {"num_images": -1}, {"output_dir": 3},
                                 {"plot_params": [1]}])
def test_display_bad_input(bad):
    m = make_model()
    with pytest.raises(ha.HOperatorError) as e:
        ha.create_dl_train_param(m, 1, 1, "true", 1, ["display"], [bad])
    assert e.value.error_code == 7914


def test_box_polygons_rectangle1_and_rectangle2():
    r1 = disp._boxes({"bbox_row1": [2.0], "bbox_col1": [3.0], "bbox_row2": [10.0],
                      "bbox_col2": [20.0], "bbox_label_id": [7]}, "bbox_label_id")
    (poly, cid, conf), = r1
    assert cid == 7 and conf == 1.0
    assert poly.min(0).tolist() == [2.0, 3.0] and poly.max(0).tolist() == [10.0, 20.0]
    # rectangle2 with phi = pi/2: length1 runs along the rows (HALCON's gen_rectangle2)
    r2 = disp._boxes({"bbox_row": [50.0], "bbox_col": [40.0], "bbox_phi": [np.pi / 2],
                      "bbox_length1": [10.0], "bbox_length2": [4.0], "bbox_class_id": [1],
                      "bbox_confidence": [0.25]}, "bbox_class_id")
    (poly, cid, conf), = r2
    assert (cid, conf) == (1, 0.25) and np.allclose(poly[0], poly[-1])
    assert np.allclose(poly.min(0), [40, 36]) and np.allclose(poly.max(0), [60, 44])


def test_display_detection_predictions(tmp_path, monkeypatch):
    from test_detection import SMALL
    rng = np.random.default_rng(3)
    ha.set_system("seed_rand", 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = ha.create_dl_model_detection("pretrained_dl_classifier_compact.hdl", 2, dict(SMALL))
    ha.set_dl_model_param(m, "batch_size", 2)
    w, h = ha.get_dl_model_param(m, "image_dimensions")[:2]
    samples = []
    for i in range(6):
        r, c = 8 + 4 * i, 6 + 3 * i
        samples.append({"image_id": i, "split": "train" if i < 4 else "validation",
                        "bbox_row1": [float(r)], "bbox_col1": [float(c)],
                        "bbox_row2": [float(r + 20)], "bbox_col2": [float(c + 24)],
                        "bbox_label_id": [i % 2],
                        "_image": rng.normal(0, 50, (h, w, 3)).astype(np.float32)})
    ds = {"class_ids": [0, 1], "class_names": ["a", "b"], "samples": samples}

    def read(dldataset, indices):
        keys = ("bbox_row1", "bbox_col1", "bbox_row2", "bbox_col2", "bbox_label_id")
        return [{"image": samples[i]["_image"].copy(), "image_id": i,
                 **{k: list(samples[i][k]) for k in keys}} for i in indices]

    monkeypatch.setattr(ev, "read_samples", read)
    # min_confidence 0: the untrained detector still finds boxes, so both kinds are drawn
    ha.set_dl_model_param(m, "min_confidence", 0.0)
    ha.set_dl_model_param(m, "max_num_detections", 4)
    tp = ha.create_dl_train_param(m, 1, 1, "true", 1, ["serialize", "display"],
                                  [[], {"output_dir": str(tmp_path), "progress": "none",
                                        "num_images": 2}])
    tr.run_training(ds, m, tp, 0)
    with Image.open(tmp_path / disp.PREDICTIONS_FILE) as im:
        a = np.asarray(im.convert("RGB")).astype(int)
    lime = (a[..., 0] < 80) & (a[..., 1] > 200) & (a[..., 2] < 80)  # the dashed true boxes
    red = (a[..., 0] > 180) & (a[..., 1] < 80) & (a[..., 2] < 80)   # class 0's found boxes
    blue = (a[..., 2] > 150) & (a[..., 0] < 80) & (a[..., 1] < 160)  # class 1's
    assert lime.sum() > 50 and (red.sum() + blue.sum()) > 50
    assert not os.path.exists(tmp_path / disp.CONFUSION_FILE)


def test_live_window_needs_a_display(reader, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    ds = make_dataset()
    m = make_model()
    before = {n: np.array(m.core.get_param(n)) for n in m.core.param_names()}
    with pytest.raises(ha.HOperatorError) as e:
        tp = ha.create_dl_train_param(m, 1, 1, "true", 1, ["serialize", "display"],
                                      [[], {"output_dir": str(tmp_path / "d"), "live": "true"}])
        tr.run_training(ds, m, tp, 0)
    assert e.value.error_code == 7914 and "display" in str(e.value)
    assert all(np.array_equal(before[n], np.array(m.core.get_param(n))) for n in before)
    assert not os.path.exists(tmp_path / "d")


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display (e.g. xvfb-run)")
def test_live_window_draws_the_plot(reader, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)  # nothing may land anywhere else
    plt = pytest.importorskip("matplotlib.pyplot")
    try:
        disp.live_backend()
    except ha.HOperatorError as err:
        pytest.skip(str(err))
    ds = make_dataset()
    m = make_model()
    tp = ha.create_dl_train_param(m, 2, 1, "true", 1, ["serialize", "display"],
                                  [[], {"progress": "none", "live": "true"}])
    tr.run_training(ds, m, tp, 0)
    fig = plt.figure("halcdl training")  # the window the training drew into, still open
    assert len(fig.axes) == 3 and fig.axes[0].lines and len(fig.axes[0].lines[0].get_xdata()) == 8
    fig.canvas.draw()
    w, h = fig.canvas.get_width_height()
    assert w > 300 and h > 300
    fig.savefig(tmp_path / "live.png")
    plt.close(fig)
    assert os.listdir(tmp_path) == ["live.png"]  # live alone writes no files
