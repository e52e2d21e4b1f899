"""create_dl_train_param and train_dl_model: HALCON's loop semantics, serialization, resume,
determinism, bad input.

The datasets are preprocessed ones as preprocess_dl_dataset leaves them: one DLSample .hdict
file per sample under the dataset's 'dlsample_dir', read by the real read_dl_samples. The
``reader`` fixture wraps the workflow's sample reader (``halcdl.workflow.evaluate.
read_samples``, which train_dl_model and evaluate_dl_model both call) to log the indices it
was asked for, so the tests see exactly which samples each iteration trained on.
"""
from __future__ import annotations

import copy
import os
import warnings

import numpy as np
import pytest

import halcdl as ha
from halcdl.io.hdict import write_hdict
from halcdl.workflow import evaluate as ev
from halcdl.workflow import train as tr
from halcdl.workflow.hooks import TrainHook

SIZE = 16
LR = 0.01
SAMPLE_DIR: list = []  # the folder of this test's DLSample files (set by a fixture)


@pytest.fixture(autouse=True)
def _sample_dir(tmp_path_factory):
    SAMPLE_DIR[:] = [str(tmp_path_factory.mktemp("dlsamples"))]


def make_dataset(n_train=22, n_val=8, n_test=6, classes=3, seed=0):
    """Classes told apart by the mean brightness of their images (learnable in a few steps)."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n_train + n_val + n_test):
        c = i % classes
        img = rng.normal(0, 20, (SIZE, SIZE, 3)).astype(np.float32) + (c - 1) * 60.0
        split = "train" if i < n_train else ("validation" if i < n_train + n_val else "test")
        name = f"{seed}_{n_train}_{100 + i}_dlsample.hdict"
        write_hdict({"image": img, "image_id": 100 + i, "image_label_id": c},
                    os.path.join(SAMPLE_DIR[0], name))
        samples.append({"image_id": 100 + i, "image_label_id": c, "split": split,
                        "dlsample_file_name": name, "_image": img})
    return {"class_ids": list(range(classes)), "class_names": [f"c{c}" for c in
                                                               range(classes)],
            "samples": samples, "image_dir": "", "dlsample_dir": SAMPLE_DIR[0]}


@pytest.fixture
def reader(monkeypatch):
    """The real read_dl_samples; ``reader.log`` lists every call's indices."""
    log: list[list[int]] = []
    real = ev.read_samples

    def read(dldataset, indices):
        log.append(list(indices))
        return real(dldataset, indices)

    monkeypatch.setattr(ev, "read_samples", read)
    read.log = log
    return read


def make_model(batch=4, seed=7):
    ha.set_system("seed_rand", seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    ha.set_dl_model_param(m, "image_dimensions", [SIZE, SIZE, 3])
    ha.set_dl_model_param(m, "class_ids", [0, 1, 2])
    ha.set_dl_model_param(m, "batch_size", batch)
    ha.set_dl_model_param(m, "learning_rate", LR)
    ha.set_dl_model_param(m, "momentum", 0.9)
    return m


def weights(m):
    return {n: np.array(m.core.get_param(n)) for n in m.core.param_names()}


def state(m):
    st = dict(m.core.get_state())
    return {"m1": np.array(st["m1"]), "m2": np.array(st["m2"]), "steps": st["steps"]}


def assert_same_model(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for n in wa:
        assert np.array_equal(wa[n], wb[n]), f"parameter {n} differs"
    sa, sb = state(a), state(b)
    assert np.array_equal(sa["m1"], sb["m1"]) and sa["steps"] == sb["steps"]


def train_param(m, epochs=2, interval=1.0, names=(), values=(), tmp=None, seed=5):
    names, values = list(names), list(values)
    if "serialize" not in names:
        names.append("serialize")
        values.append([] if tmp is None else
                      [{"type": "best", "basename": str(tmp / "model_best")}])
    return ha.create_dl_train_param(m, epochs, interval, "false", seed, names, values)


class Recorder(TrainHook):
    """Logs (event, epoch, iteration, learning rate, momentum) for every event."""

    def __init__(self):
        self.events = []

    def _log(self, name, ctx):
        self.events.append((name, ctx.epoch, ctx.iteration, ctx.model.params["learning_rate"],
                            ctx.model.params["momentum"]))

    def on_train_begin(self, ctx):
        self._log("train_begin", ctx)

    def on_epoch_begin(self, ctx):
        self._log("epoch_begin", ctx)

    def on_batch_begin(self, ctx):
        self._log("batch_begin", ctx)

    def on_batch_end(self, ctx):
        self._log("batch_end", ctx)

    def on_evaluation(self, ctx):
        self._log("evaluation", ctx)

    def on_epoch_end(self, ctx):
        self._log("epoch_end", ctx)

    def on_train_end(self, ctx):
        self._log("train_end", ctx)


# --------------------------------------------------------------------------------------------
# create_dl_train_param
# --------------------------------------------------------------------------------------------
def test_create_dl_train_param_defaults():
    m = make_model()
    tp = ha.create_dl_train_param(m, 3, 0.5, "true", 11, [], [])
    assert tp["num_epochs"] == 3 and tp["evaluation_interval_epochs"] == 0.5
    assert tp["seed_rand"] == 11
    assert tp["serialization_strategies"] == [{"type": "best", "basename": "model_best"}]
    assert tp["evaluation_comparison_keys"] == ["top1_error"]
    assert tp["update_interval_seconds"] == 2 and tp["num_samples_mean_loss"] == 1000
    assert tp["change_strategies"] == [] and tp["augmentation_param"] == {}
    assert tp["display_param"]["enabled"] == "true"
    assert tp["evaluate_before_train"] == "false"
    seg = ha.read_dl_model("pretrained_dl_segmentation_compact.hdl")
    assert ha.create_dl_train_param(seg, 1, 1, 0, [], [], [])["evaluation_comparison_keys"] \
        == ["mean_iou"]
    # random_seed [] → some integer seed
    assert isinstance(ha.create_dl_train_param(m, 1, 1, 0, [], [], [])["seed_rand"], int)


def test_create_dl_train_param_gen_params():
    m = make_model()
    change = [{"model_param": "learning_rate", "initial_value": 0.1, "epochs": [1, 2],
               "values": [0.01, 0.001], "scale_momentum_threshold": 2.0}]
    ser = [{"type": "final", "basename": "x"}, {"type": "epochs", "epochs": 2}]
    tp = ha.create_dl_train_param(
        m, 4, 1, "false", 1, ["change", "serialize", "evaluate", "augment", "display",
                              "evaluate_before_train"],
        [change, ser, {"measures": ["top1_error", "precision"]}, {"mirror": "r"},
         {"x_axis_label": "iterations"}, "true"])
    assert tp["change_strategies"][0]["values"] == [0.01, 0.001]
    assert tp["change_strategies"][0]["scale_momentum_threshold"] == 2.0
    assert [s["type"] for s in tp["serialization_strategies"]] == ["final", "epochs"]
    assert tp["serialization_strategies"][1]["basename"] == "model"
    assert tp["evaluation_param"]["measures"] == ["top1_error", "precision"]
    assert tp["augmentation_param"] == {"mirror": "r"}
    assert tp["display_param"]["x_axis_label"] == "iterations"
    assert tp["evaluate_before_train"] == "true"
    # a single name with a single dict value
    tp = ha.create_dl_train_param(m, 1, 1, "false", 1, "change", change[0])
    assert len(tp["change_strategies"]) == 1


@pytest.mark.parametrize("args,code", [
    (("x", 1, "false", 1, [], []), 1202),
    ((0, 1, "false", 1, [], []), 1302),
    ((1, -1, "false", 1, [], []), 1303),
    ((1, 1, "maybe", 1, [], []), 1304),
    ((1, 1, "false", 1.5, [], []), 1205),
    ((1, 1, "false", 1, ["early"], [1]), 7911),
    ((1, 1, "false", 1, ["change", "serialize"], [[]]), 1407),
    ((1, 1, "false", 1, "change", {"model_param": "nope", "epochs": [1], "values": [1]}), 7914),
    ((1, 1, "false", 1, "change", {"model_param": "learning_rate", "epochs": [1, 2],
                                   "values": [1]}), 7914),
    ((1, 1, "false", 1, "change", {"model_param": "learning_rate", "epochs": [2, 1],
                                   "values": [1, 2]}), 7914),
    ((1, 1, "false", 1, "change", {"model_param": "momentum", "epochs": [1], "values": [0.1],
                                   "scale_momentum_threshold": 2}), 7914),
    ((1, 1, "false", 1, "change", {"model_param": "learning_rate", "epochs": [1],
                                   "values": ["big"]}), 7914),
    ((1, 1, "false", 1, "change", {"model_param": "learning_rate", "epochs": [1],
                                   "values": [1], "when": 3}), 7911),
    ((1, 1, "false", 1, "serialize", {"type": "sometimes"}), 7914),
    ((1, 1, "false", 1, "serialize", {"type": "epochs"}), 7914),
    ((1, 1, "false", 1, "serialize", {"type": "best", "basename": ""}), 7914),
    ((1, 1, "false", 1, "serialize", {"type": "best", "epochs": 2}), 7914),
    ((1, 1, "false", 1, "evaluate", {"measures": "all", "colour": 1}), 7911),
    ((1, 1, "false", 1, "augment", 3), 7914),
])
def test_create_dl_train_param_bad_input(args, code):
    m = make_model()
    with pytest.raises(ha.HOperatorError) as e:
        ha.create_dl_train_param(m, *args)
    assert e.value.error_code == code, e.value.message
    with pytest.raises(ha.HOperatorError) as e:
        ha.create_dl_train_param("model", 1, 1, "false", 1, [], [])
    assert e.value.error_code == 1201


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------
def test_iterations_drop_last_and_shuffle(reader):
    ds = make_dataset(n_train=22)
    m = make_model(batch=4)
    tp = train_param(m, epochs=3, interval=0)
    rec = Recorder()
    res, infos, evals = tr.run_training(ds, m, tp, 0, [rec])
    train_idx = [i for i, s in enumerate(ds["samples"]) if s["split"] == "train"]
    batches = [b for b in reader.log if b[0] in train_idx and len(b) == 4
               and all(i in train_idx for i in b)]
    assert len(batches) == 3 * (22 // 4)  # floor(22 / 4) = 5 iterations per epoch
    for e in range(3):
        ep = batches[5 * e:5 * e + 5]
        flat = [i for b in ep for i in b]
        assert len(set(flat)) == 20  # no sample twice in an epoch, 2 dropped
        perm = np.random.default_rng([tp["seed_rand"], e]).permutation(22)
        assert flat == [train_idx[j] for j in perm[:20]]  # the documented shuffle
    assert batches[:5] != batches[5:10]  # a new order every epoch
    # epoch values seen by the hooks: fractional, ending exactly at the epoch
    ends = [(ep, it) for name, ep, it, *_ in rec.events if name == "batch_end"]
    assert ends[0] == (pytest.approx(0.2), 1) and ends[4] == (pytest.approx(1.0), 5)
    assert [x for x in rec.events if x[0] == "epoch_end"][-1][1:3] == (3.0, 15)
    assert set(res) >= {"total_loss"}
    ep_infos = [i for i in infos if i["iteration"] % 5 == 0]
    assert [i["epoch"] for i in ep_infos] == [1.0, 2.0, 3.0]
    assert all(np.isfinite(i["mean_loss"]) for i in infos)
    # interval 0: one evaluation, after the last iteration
    assert [(e["epoch"], e["iteration"]) for e in evals] == [(3.0, 15)]
    assert set(evals[0]["result"]) >= {"top1_error", "precision", "absolute_confusion_matrix"}


def test_batch_size_multiplier_and_reread(reader):
    ds = make_dataset(n_train=24)
    m = make_model(batch=2)
    ha.set_dl_model_param(m, "batch_size_multiplier", 3)
    tp = train_param(m, epochs=1, interval=0)
    tr.run_training(ds, m, tp, 0)
    train_idx = {i for i, s in enumerate(ds["samples"]) if s["split"] == "train"}
    sizes = [len(b) for b in reader.log if set(b) <= train_idx]
    assert sizes[:4] == [6, 6, 6, 6] and len(sizes) == 4  # 24 // (2·3)


def test_evaluation_interval(reader):
    ds = make_dataset(n_train=20)
    m = make_model(batch=4)  # 5 iterations per epoch
    tp = train_param(m, epochs=2, interval=0.4)  # every floor(0.4·5) = 2 iterations
    _, _, evals = tr.run_training(ds, m, tp, 0)
    assert [e["iteration"] for e in evals] == [2, 4, 6, 8, 10]
    val = [i for i, s in enumerate(ds["samples"]) if s["split"] == "validation"]
    # each evaluation reads the validation split in batches of batch_size
    val_reads = [b for b in reader.log if set(b) <= set(val)]
    assert [i for b in val_reads[:2] for i in b] == val
    tp = train_param(m, epochs=1, interval=1, names=["evaluate_before_train", "display"],
                     values=["true", {"selected_percentage_train_samples": 25}])
    reader.log.clear()
    _, _, evals = tr.run_training(ds, m, tp, 0)
    assert [e["iteration"] for e in evals] == [0, 5]
    # result_train: the first 25 % of the training split (5 of 20), evaluated as well
    train_idx = [i for i, s in enumerate(ds["samples"]) if s["split"] == "train"]
    direct, _ = ha.evaluate_dl_model(ds, m, "sample_indices", train_idx[:5], [])
    assert evals[-1]["result_train"]["top1_error"] == direct["top1_error"]
    assert [train_idx[:4], train_idx[4:5]] in [reader.log[i:i + 2]
                                              for i in range(len(reader.log))]
    assert evals[0]["result"]["top1_error"] >= 0 and "result_train" in evals[0]


def test_change_strategy_and_momentum_scaling(reader):
    ds = make_dataset(n_train=20)
    m = make_model(batch=4)  # 5 iterations per epoch
    change = {"model_param": "learning_rate", "initial_value": 0.02, "epochs": [0.4, 1.0],
              "values": [0.01, 0.0001], "scale_momentum_threshold": 5.0}
    tp = train_param(m, epochs=2, interval=0, names=["change"], values=[change])
    rec = Recorder()
    tr.run_training(ds, m, tp, 0, [rec])
    # the learning rate in force during each iteration (seen at batch_end), iteration 1..10;
    # iteration i starts at epoch (i - 1) / 5
    lr = [x[3] for x in rec.events if x[0] == "batch_begin"]  # after the change hook
    mom = [x[4] for x in rec.events if x[0] == "batch_begin"]
    assert lr == [0.02, 0.02, 0.01, 0.01, 0.01, 0.0001, 0.0001, 0.0001, 0.0001, 0.0001]
    # factor 0.5 at iteration 3 (below the threshold 5): momentum unchanged; factor 0.01 at
    # iteration 6: momentum scaled by 0.01 for that iteration only
    assert mom == pytest.approx([0.9, 0.9, 0.9, 0.9, 0.9, 0.009, 0.9, 0.9, 0.9, 0.9])
    assert m.params["momentum"] == 0.9


def test_change_strategy_matches_manual_loop(reader):
    """The whole loop equals a hand-written one: same batches, same parameter changes."""
    ds = make_dataset(n_train=20)
    m = make_model(batch=4)
    change = {"model_param": "learning_rate", "initial_value": 0.02, "epochs": [1],
              "values": [0.005]}
    tp = train_param(m, epochs=2, interval=0, names=["change"], values=[change], seed=9)
    tr.run_training(ds, m, tp, 0)
    ref = make_model(batch=4)
    train_idx = [i for i, s in enumerate(ds["samples"]) if s["split"] == "train"]
    for e in range(2):
        ha.set_dl_model_param(ref, "learning_rate", 0.02 if e == 0 else 0.005)
        perm = np.random.default_rng([9, e]).permutation(20)
        for k in range(5):
            idx = [train_idx[j] for j in perm[4 * k:4 * k + 4]]
            ha.train_dl_model_batch(ref, reader(ds, idx))
    assert_same_model(m, ref)


def test_seeded_run_twice_identical(reader):
    ds = make_dataset()
    runs = []
    for _ in range(2):
        m = make_model(batch=4)
        tp = train_param(m, epochs=2, interval=0.5, seed=3)
        _, infos, evals = tr.run_training(ds, m, tp, 0)
        runs.append((m, evals))
    assert_same_model(runs[0][0], runs[1][0])
    assert [e["result"]["top1_error"] for e in runs[0][1]] == \
        [e["result"]["top1_error"] for e in runs[1][1]]


def test_best_serialization(reader, tmp_path):
    ds = make_dataset()
    m = make_model(batch=4)
    best_weights = {}

    class Snap(TrainHook):
        def on_evaluation(self, ctx):
            if ctx.improved:
                best_weights["w"] = weights(ctx.model)
                best_weights["value"] = ctx.comparison_value

    tp = train_param(m, epochs=3, interval=0.5, tmp=tmp_path)
    _, _, evals = tr.run_training(ds, m, tp, 0, [Snap()])
    assert os.path.isfile(tmp_path / "model_best.hdl")
    assert os.path.isfile(tmp_path / "model_best_info.hdict")
    values = [1 - e["result"]["top1_error"] for e in evals]
    assert max(values) == pytest.approx(best_weights["value"])
    best = ha.read_dl_model(str(tmp_path / "model_best.hdl"))
    for n, w in weights(best).items():
        assert np.array_equal(w, best_weights["w"][n])
    info = tr.read_info(str(tmp_path / "model_best_info.hdict"))
    first_best = next(e for e in evals if 1 - e["result"]["top1_error"] == max(values))
    assert info["iteration"] == first_best["iteration"]
    assert info["best_evaluation"]["best_value"] == pytest.approx(max(values))
    assert info["best_evaluation"]["comparison_keys"] == "top1_error"
    assert info["best_evaluation"]["best_info"]["result"]["top1_error"] == \
        pytest.approx(1 - max(values))
    assert info["model_params"]["learning_rate"] == pytest.approx(LR)
    assert info["resume"]["best_value"] == pytest.approx(max(values))


def test_epochs_final_current_serialization(reader, tmp_path):
    ds = make_dataset(n_train=20)
    m = make_model(batch=4)
    ser = [{"type": "epochs", "epochs": 2, "basename": str(tmp_path / "ep")},
           {"type": "epochs", "epochs": [1, 3], "basename": str(tmp_path / "at")},
           {"type": "final", "basename": str(tmp_path / "fin")},
           {"type": "current", "basename": str(tmp_path / "cur")}]
    tp = ha.create_dl_train_param(m, 4, 0, "false", 1, ["serialize"], [ser])
    snaps = {}

    class Snap(TrainHook):
        def on_epoch_end(self, ctx):
            snaps[ctx.epoch] = weights(ctx.model)

    tr.run_training(ds, m, tp, 0, [Snap()])
    names = sorted(os.listdir(tmp_path))
    assert names == sorted(["ep_2.hdl", "ep_2_info.hdict", "ep_4.hdl", "ep_4_info.hdict",
                            "at_1.hdl", "at_1_info.hdict", "at_3.hdl", "at_3_info.hdict",
                            "fin.hdl", "fin_info.hdict", "cur.hdl", "cur_info.hdict"])
    for f, e in (("ep_2", 2.0), ("at_1", 1.0), ("at_3", 3.0), ("cur", 4.0), ("fin", 4.0)):
        got = weights(ha.read_dl_model(str(tmp_path / f"{f}.hdl")))
        assert all(np.array_equal(got[n], snaps[e][n]) for n in got), f
        assert tr.read_info(str(tmp_path / f"{f}_info.hdict"))["epoch"] == e


def test_resume_2_plus_2_equals_4(reader, tmp_path):
    ds = make_dataset()
    change = {"model_param": "learning_rate", "epochs": [1.5, 3], "values": [0.005, 0.001]}
    # 4 epochs straight
    m4 = make_model(batch=4)
    tp4 = train_param(m4, epochs=4, interval=0.5, names=["change"], values=[change],
                      tmp=tmp_path / "straight")
    os.makedirs(tmp_path / "straight")
    _, _, evals4 = tr.run_training(ds, m4, tp4, 0)
    # 2 epochs, then 'resume' to 4 on a fresh handle
    ser = [{"type": "current", "basename": str(tmp_path / "cur")},
           {"type": "best", "basename": str(tmp_path / "best")}]
    m2 = make_model(batch=4)
    tp2 = ha.create_dl_train_param(m2, 2, 0.5, "false", 5, ["change", "serialize"],
                                   [change, ser])
    tr.run_training(ds, m2, tp2, 0)
    fresh = make_model(batch=1, seed=99)  # other weights, other batch size: all replaced
    tp2b = dict(tp2, num_epochs=4)
    _, _, evals_b = ha.train_dl_model(ds, fresh, tp2b, "resume")
    assert_same_model(fresh, m4)
    assert fresh.params["learning_rate"] == m4.params["learning_rate"] == 0.001
    assert [e["iteration"] for e in evals_b] == [e["iteration"] for e in evals4][5:]
    # the best value carried over: the 'best' file is the straight run's best
    best4 = weights(ha.read_dl_model(str(tmp_path / "straight" / "model_best.hdl")))
    best = weights(ha.read_dl_model(str(tmp_path / "best.hdl")))
    assert all(np.array_equal(best4[n], best[n]) for n in best4)


def test_start_epoch_number(reader):
    ds = make_dataset(n_train=20)
    m = make_model(batch=4)
    tp = train_param(m, epochs=3, interval=0)
    rec = Recorder()
    tr.run_training(ds, m, tp, 2, [rec])
    ends = [x for x in rec.events if x[0] == "batch_end"]
    assert len(ends) == 5 and ends[0][2] == 11  # epoch 2 only, iterations 11..15


def test_stop_from_a_hook(reader, tmp_path):
    ds = make_dataset(n_train=20)
    m = make_model(batch=4)

    class StopAt(TrainHook):
        def on_batch_end(self, ctx):
            if ctx.iteration == 7:
                ctx.stop = True
                ctx.stop_reason = "test"

    ser = [{"type": "final", "basename": str(tmp_path / "fin")}]
    tp = ha.create_dl_train_param(m, 4, 0, "false", 2, ["serialize"], [ser])
    _, infos, evals = tr.run_training(ds, m, tp, 0, [StopAt()])
    assert infos[-1]["iteration"] == 7 and infos[-1]["stop_reason"] == "test"
    assert [e["iteration"] for e in evals] == [7]
    steps = state(m)["steps"]
    assert steps == 7
    # the model is consistent: it still trains and predicts
    ha.apply_dl_model(m, reader(ds, [0, 1]), [])
    # resuming the 'final' state inside epoch 2 reaches the same weights as 4 epochs straight
    straight = make_model(batch=4)
    tr.run_training(ds, straight, train_param(straight, epochs=4, interval=0, seed=2), 0)
    tr.run_training(ds, m, dict(tp), "resume")
    assert_same_model(m, straight)


# --------------------------------------------------------------------------------------------
# bad input: codes, nothing changed
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mutate,code", [
    (lambda ds, tp: ("nope", tp, 0), 1201),
    (lambda ds, tp: ({"samples": 3}, tp, 0), 7925),
    (lambda ds, tp: ({**ds, "samples": [{k: v for k, v in s.items() if k != "split"}
                                        for s in ds["samples"]]}, tp, 0), 7925),
    (lambda ds, tp: ({**ds, "samples": [s for s in ds["samples"] if s["split"] != "train"]},
                     tp, 0), 7925),
    (lambda ds, tp: (ds, "tp", 0), 1203),
    (lambda ds, tp: (ds, {**tp, "num_epochs": -1}, 0), 7914),
    (lambda ds, tp: (ds, {**tp, "change_strategies": [{"model_param": "x"}]}, 0), 7914),
    (lambda ds, tp: (ds, {**tp, "evaluation_comparison_keys": [3]}, 0), 7914),
    (lambda ds, tp: (ds, tp, -1), 1304),
    (lambda ds, tp: (ds, tp, 1.5), 1304),
    (lambda ds, tp: (ds, tp, "later"), 1204),
    (lambda ds, tp: (ds, tp, "resume"), 5200),  # nothing serialized
])
def test_train_dl_model_bad_input(reader, tmp_path, mutate, code):
    ds = make_dataset(n_train=8)
    m = make_model(batch=4)
    before = weights(m), dict(m.params)
    tp = train_param(m, epochs=1, interval=0)
    tp["serialization_strategies"] = [{"type": "current", "basename": str(tmp_path / "c")}]
    ds_copy, tp_copy = copy.deepcopy(ds), copy.deepcopy(tp)
    args = mutate(ds, tp)
    with pytest.raises(ha.HOperatorError) as e:
        ha.train_dl_model(args[0], m, args[1], args[2])
    assert e.value.error_code == code, e.value.message
    after = weights(m)
    assert all(np.array_equal(before[0][n], after[n]) for n in after)
    assert m.params == before[1]
    assert reader.log == [] and os.listdir(tmp_path) == []
    assert tp == tp_copy and all(np.array_equal(a["_image"], b["_image"])
                                 for a, b in zip(ds["samples"], ds_copy["samples"]))


def test_batch_larger_than_train_split(reader):
    ds = make_dataset(n_train=3)
    m = make_model(batch=4)
    with pytest.raises(ha.HOperatorError) as e:
        ha.train_dl_model(ds, m, train_param(m, epochs=1), 0)
    assert e.value.error_code == 7925


def test_display_prints_progress(reader, capsys):
    ds = make_dataset(n_train=8)
    m = make_model(batch=4)
    tp = ha.create_dl_train_param(m, 1, 1, "true", 1, ["serialize"], [[]])
    ha.train_dl_model(ds, m, tp, 0)
    out = capsys.readouterr().out
    assert "epoch" in out and "loss" in out and "validation top1_error" in out


# --------------------------------------------------------------------------------------------
# set_dl_model_param_max_gpu_batch_size
# --------------------------------------------------------------------------------------------
def test_max_batch_size_cpu():
    m = make_model(batch=1)
    w = weights(m)
    ha.set_dl_model_param_max_gpu_batch_size(m, 48)
    b = ha.get_dl_model_param_s(m, "batch_size")
    # a tiny network: everything up to the bound fits; the answer is the bound or a power of 2
    assert b == 48
    assert all(np.array_equal(w[n], v) for n, v in weights(m).items())  # weights untouched
    ha.set_dl_model_param_max_gpu_batch_size(m, 5)
    assert ha.get_dl_model_param_s(m, "batch_size") == 5
    for bad, code in ((0, 1302), (2.5, 1202), ([1, 2], 1402)):
        with pytest.raises(ha.HOperatorError) as e:
            ha.set_dl_model_param_max_gpu_batch_size(m, bad)
        assert e.value.error_code == code
    assert ha.get_dl_model_param_s(m, "batch_size") == 5


def test_max_batch_size_respects_memory(monkeypatch):
    m = make_model(batch=1)
    monkeypatch.setattr(tr, "_meminfo_available", lambda: 100 * 2**20)  # 80 MiB usable
    monkeypatch.setattr(tr, "_probe_bytes", lambda model, b: (10 + 3 * b) * 2**20)
    ha.set_dl_model_param_max_gpu_batch_size(m, 1000)
    # fixed 10 MiB + 3 MiB per sample ≤ 80 MiB → b ≤ 23: the largest power of two is 16
    assert ha.get_dl_model_param_s(m, "batch_size") == 16


def test_augmentation_reproducible_and_resumable(reader, tmp_path):
    """augment_dl_samples runs on every batch (seeded by seed_rand, the epoch and the image
    id): two runs agree, a run without augmentation does not, and resume matches too."""
    ds = make_dataset(n_train=16)
    aug = {"augmentation_percentage": 100, "mirror": "rc", "brightness_variation": 20}
    runs = []
    for names, values in ((["augment"], [aug]), (["augment"], [aug]), ([], [])):
        m = make_model(batch=4)
        tr.run_training(ds, m, train_param(m, epochs=2, interval=0, names=names,
                                           values=values), 0)
        runs.append(m)
    assert_same_model(runs[0], runs[1])
    assert any(not np.array_equal(a, b) for a, b in zip(weights(runs[0]).values(),
                                                        weights(runs[2]).values()))
    ser = [{"type": "current", "basename": str(tmp_path / "cur")}]
    m = make_model(batch=4)
    tp = ha.create_dl_train_param(m, 1, 0, "false", 5, ["augment", "serialize"], [aug, ser])
    ha.train_dl_model(ds, m, tp, 0)
    ha.train_dl_model(ds, m, {**tp, "num_epochs": 2}, "resume")
    assert_same_model(m, runs[0])
    # the dataset's samples are not changed by the augmentation (the reader gives copies)
    assert all("image" not in s for s in ds["samples"])


def test_stop_before_a_batch_restores_momentum(reader):
    ds = make_dataset(n_train=20)
    m = make_model(batch=4)
    change = {"model_param": "learning_rate", "initial_value": 0.02, "epochs": [1],
              "values": [0.0002], "scale_momentum_threshold": 5.0}

    class StopAtEpoch1(TrainHook):
        def on_batch_begin(self, ctx):
            if ctx.epoch >= 1:  # the change hook has just scaled the momentum
                assert ctx.model.params["momentum"] == pytest.approx(0.009)
                ctx.stop = True

    tp = train_param(m, epochs=3, interval=0, names=["change"], values=[change])
    _, infos, _ = tr.run_training(ds, m, tp, 0, [StopAtEpoch1()])
    assert state(m)["steps"] == 5 and infos[-1]["iteration"] == 5
    assert m.params["momentum"] == 0.9
