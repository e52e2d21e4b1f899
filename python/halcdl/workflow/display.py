"""What train_dl_model shows and writes with enable_display 'true': a progress bar (tqdm), a
training plot, confusion matrices / example predictions per evaluation (matplotlib, drawn
off-screen with the Agg canvas, so no display is needed and pyplot's global state is never
touched, except by the optional live window), and a JSON-lines log of every iteration, train info and evaluation.

The keys of the display dict (create_dl_train_param's 'display' generic parameter; besides
HALCON's own keys, which are kept and ignored here):

=======================  ==================================================================
``output_dir``           folder for the files below (created when missing). Without it only
                         the progress bar is shown and nothing is written.
``progress``             'bar' (default: a tqdm bar on stderr: epoch, loss, measure,
                         images/s, ETA), 'lines' (one printed line per
                         update_interval_seconds, HALCON-like) or 'none'.
``plot``                 'true' (default) / 'false': ``training_plot.png`` (loss and the
                         ``plot_params`` per iteration, evaluation measures per epoch),
                         rewritten after every evaluation and at the end.
``plot_params``          model parameters drawn per iteration (default ['learning_rate']).
``confusion_matrix``     'true' (default) / 'false': classification, after every evaluation
                         ``confusion_matrix.png`` (latest) and ``confusion_matrix_<epoch>.png``
                         (rows = ground truth, columns = prediction, counts).
``num_images``           HALCON's key: number of validation images drawn with their
                         prediction after every evaluation (``predictions.png``; segmentation:
                         image | ground truth | prediction; classification: true / predicted
                         label; detection: true boxes dashed, the 10 most confident found
                         boxes with class and confidence).  Default 0 (HALCON's default).
``log``                  'true' (default) / 'false': ``train_log.jsonl``.
``live``                 'false' (default) / 'true': the training plot also in a window
                         (matplotlib's interactive backend, e.g. TkAgg), redrawn every
                         update_interval_seconds and after every evaluation, left open at
                         the end.  Needs a display: 'true' without one raises 7914 before
                         training starts.  GUI toolkits run in the main thread only: in a
                         background job (start_train_dl_model) the window is skipped with a
                         warning.
=======================  ==================================================================

All files are written atomically (a temporary file renamed over the old one).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import numpy as np

from ..errors import (
    H_ERR_DL_FILE_WRITE,
    H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE,
    HOperatorError,
)
from ..operators._tuple import is_int, is_str, to_tuple
from .hooks import TrainContext, TrainHook

__all__: list[str] = []

PLOT_FILE = "training_plot.png"
LOG_FILE = "train_log.jsonl"
CONFUSION_FILE = "confusion_matrix.png"
PREDICTIONS_FILE = "predictions.png"


def _bad(msg: str) -> HOperatorError:
    return HOperatorError(H_ERR_DL_MODEL_UNSUPPORTED_GENVALUE, msg)


def _tf(d: dict, key: str, default: str) -> bool:
    v = to_tuple(d.get(key, default))
    x = v[0] if len(v) == 1 else None
    if x is True or x == "true" or (is_int(x) and x == 1):
        return True
    if x is False or x == "false" or (is_int(x) and x == 0):
        return False
    raise _bad(f"display {key} must be 'true' or 'false', got {d.get(key)!r}")


def check_display(d: dict) -> dict:
    """The display options halcdl uses, validated (7914)."""
    out: dict = {}
    od = d.get("output_dir")
    if isinstance(od, os.PathLike):
        od = os.fspath(od)
    if od is not None and od != [] and (not is_str(od) or not od):
        raise _bad(f"display output_dir must be a folder name, got {od!r}")
    out["output_dir"] = str(od) if od not in (None, []) else None
    prog = d.get("progress", "bar")
    if prog not in ("bar", "lines", "none"):
        raise _bad(f"display progress must be 'bar', 'lines' or 'none', got {prog!r}")
    out["progress"] = prog
    out["plot"] = _tf(d, "plot", "true")
    out["confusion_matrix"] = _tf(d, "confusion_matrix", "true")
    out["log"] = _tf(d, "log", "true")
    out["live"] = _tf(d, "live", "false")
    if out["live"]:
        live_backend()  # 7914 now, before training starts, when no window can open
    pp = to_tuple(d.get("plot_params", ["learning_rate"]))
    if not all(is_str(p) for p in pp):
        raise _bad(f"display plot_params must be model parameter names, got {pp!r}")
    out["plot_params"] = [str(p) for p in pp]
    n = d.get("num_images")
    if n is not None:
        n = to_tuple(n)
        if len(n) != 1 or not is_int(n[0]) or int(n[0]) < 0:
            raise _bad(f"display num_images must be an integer >= 0, got {d.get('num_images')!r}")
        n = int(n[0])
    out["num_images"] = n
    return out


def display_hooks(tp: dict) -> list[TrainHook]:
    """The hooks enable_display 'true' adds (see the module docstring)."""
    from .train import DisplayHook  # noqa: PLC0415

    import importlib.util  # noqa: PLC0415
    import warnings  # noqa: PLC0415

    opts = check_display(tp["display_param"])
    hooks: list[TrainHook] = []
    if opts["progress"] == "bar" and importlib.util.find_spec("tqdm") is None:
        opts["progress"] = "lines"  # without tqdm: HALCON-like printed lines
    if opts["output_dir"] and (opts["plot"] or opts["confusion_matrix"]
                               or opts["num_images"]) and \
            importlib.util.find_spec("matplotlib") is None:
        warnings.warn("halcdl: matplotlib is not installed: no training plot, confusion "
                      "matrix or predictions (pip install matplotlib)", stacklevel=3)
        opts.update(plot=False, confusion_matrix=False, num_images=0)
    if opts["progress"] == "bar":
        hooks.append(ProgressBarHook())
    elif opts["progress"] == "lines":
        hooks.append(DisplayHook(float(tp["update_interval_seconds"])))
    if opts["output_dir"]:
        hooks.append(FilesHook(opts))
    if opts["live"]:
        hooks.append(LiveHook(opts, float(tp["update_interval_seconds"])))
    return hooks


def live_backend() -> str:
    """The interactive matplotlib backend a live window would use; 7914 when there is none
    (no matplotlib, no display, or only non-interactive backends)."""
    import importlib.util  # noqa: PLC0415

    if importlib.util.find_spec("matplotlib") is None:
        raise _bad("display live 'true' needs matplotlib (pip install matplotlib)")
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise _bad("display live 'true': no display (DISPLAY / WAYLAND_DISPLAY is not set); "
                   "the PNG plot in output_dir needs none")
    import matplotlib  # noqa: PLC0415

    try:  # matplotlib >= 3.9
        from matplotlib.backends import BackendFilter, backend_registry  # noqa: PLC0415

        batch = set(backend_registry.list_builtin(BackendFilter.NON_INTERACTIVE))
    except ImportError:
        batch = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"}
    backend = str(matplotlib.get_backend()).lower()  # resolves rcParams' auto choice
    if backend in {b.lower() for b in batch}:
        raise _bad(f"display live 'true': matplotlib's backend {backend!r} cannot open a "
                   f"window (install tkinter or a Qt binding, or set MPLBACKEND)")
    return backend


# --------------------------------------------------------------------------------------------
def _measure_text(ctx: TrainContext) -> str:
    from .train import _lookup  # noqa: PLC0415

    if ctx.evaluation_result is None:
        return ""
    parts = []
    for k in ctx.train_param["evaluation_comparison_keys"]:
        v = _lookup(ctx.evaluation_result, k)
        if v is not None:
            parts.append(f"{k} {float(np.nanmean(np.asarray(v, dtype=float))):.4f}")
    return " ".join(parts)


class ProgressBarHook(TrainHook):
    """A tqdm bar over the iterations (stderr), postfix: epoch, loss, measure, images/s; tqdm
    adds the ETA.  Evaluations are printed as lines above the bar (stdout)."""

    def __init__(self, stream=None) -> None:
        self.stream = stream
        self.bar = None
        self._t0 = 0.0
        self._images = 0

    def on_train_begin(self, ctx: TrainContext) -> None:
        from tqdm.auto import tqdm  # noqa: PLC0415

        self.bar = tqdm(total=max(ctx.num_iterations, ctx.iteration), initial=ctx.iteration,
                        unit="it", file=self.stream or sys.stderr, dynamic_ncols=True,
                        desc="training", leave=True)
        self._t0 = time.perf_counter()
        self._images = 0

    def _postfix(self, ctx: TrainContext) -> dict:
        dt = time.perf_counter() - self._t0
        d = {"epoch": f"{ctx.epoch:.2f}/{ctx.num_epochs:g}", "loss": f"{ctx.mean_loss:.4f}"}
        m = _measure_text(ctx)
        if m:
            d["val"] = m
        if dt > 0:
            d["img/s"] = f"{self._images / dt:.1f}"
        return d

    def on_batch_end(self, ctx: TrainContext) -> None:
        self._images += ctx.batch_size
        self.bar.set_postfix(self._postfix(ctx), refresh=False)
        self.bar.update(1)

    def on_evaluation(self, ctx: TrainContext) -> None:
        from tqdm.auto import tqdm  # noqa: PLC0415

        if self.bar is not None:
            self.bar.set_postfix(self._postfix(ctx), refresh=False)
        tqdm.write(f"epoch {ctx.epoch:.2f}  loss {ctx.mean_loss:.4f}  validation "
                   f"{_measure_text(ctx)}{'  (best)' if ctx.improved else ''}",
                   file=sys.stdout)

    def on_train_end(self, ctx: TrainContext) -> None:
        if self.bar is not None:
            self.bar.set_postfix(self._postfix(ctx), refresh=False)
            self.bar.close()
            self.bar = None


# --------------------------------------------------------------------------------------------
def jsonable(x: Any) -> Any:
    """x with numpy arrays and scalars as lists and numbers (NaN/inf as null)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        return jsonable(x.item())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def _atomic_savefig(fig, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415

    FigureCanvasAgg(fig)
    tmp = f"{path}.tmp{os.getpid()}.png"
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    except OSError as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise HOperatorError(H_ERR_DL_FILE_WRITE, f"cannot write {path!r}: {err}") from None


def draw_training_plot(records: list[dict], path: str, plot_params: list[str],
                       measure_names: list[str], title: str = "") -> None:
    """The training plot from log records: top, the loss per iteration (and its running
    mean); middle, the plot_params per iteration; bottom, the evaluation measures over
    epochs."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(9, 8))
    plot_into(fig, records, plot_params, measure_names, title)
    _atomic_savefig(fig, path)


def plot_into(fig, records: list[dict], plot_params: list[str], measure_names: list[str],
              title: str = "") -> None:
    """Draw the training plot into ``fig`` (cleared first): the PNG's and the live
    window's figure."""
    fig.clear()
    its = [r for r in records if r.get("type") == "iteration"]
    evs = [r for r in records if r.get("type") == "evaluation"]
    ax1, ax2, ax3 = fig.subplots(3, 1)
    ep = np.array([r["epoch"] for r in its], dtype=float)
    loss = np.array([np.nan if r.get("loss") is None else r["loss"] for r in its],
                    dtype=float)
    ax1.plot(ep, loss, color="tab:blue", lw=0.8, alpha=0.5, label="loss (batch)")
    mean = np.array([np.nan if r.get("mean_loss") is None else r["mean_loss"] for r in its],
                    dtype=float)
    ax1.plot(ep, mean, color="tab:blue", lw=1.8, label="mean loss")
    ax1.set_ylabel("loss")
    ax1.set_title(title or "training")
    ax1.legend(loc="upper right")
    ax1.grid(alpha=0.3)
    colors = ["tab:orange", "tab:purple", "tab:brown", "tab:pink"]
    for i, name in enumerate(plot_params):
        vals = np.array([np.nan if r.get(name) is None else r[name] for r in its],
                        dtype=float)
        ax2.plot(ep, vals, color=colors[i % len(colors)], label=name)
    ax2.set_ylabel(", ".join(plot_params))
    if plot_params:
        ax2.legend(loc="upper right")
    ax2.grid(alpha=0.3)
    e_ep = np.array([r["epoch"] for r in evs], dtype=float)
    for i, name in enumerate(measure_names):
        vals = np.array([np.nan if r.get("measures", {}).get(name) is None
                         else r["measures"][name] for r in evs], dtype=float)
        ax3.plot(e_ep, vals, marker="o", color=["tab:green", "tab:red", "tab:cyan"][i % 3],
                 label=name)
    ax3.set_ylabel("validation")
    ax3.set_xlabel("epoch")
    if measure_names and evs:
        ax3.legend(loc="best")
    ax3.grid(alpha=0.3)
    lo = min([0.0] + list(ep[:1]))
    hi = max([1.0] + list(ep[-1:]) + list(e_ep[-1:]))
    for ax in (ax1, ax2, ax3):
        ax.set_xlim(lo, hi)
    fig.tight_layout()


def draw_confusion_matrix(cm: np.ndarray, class_names: list[str], path: str,
                          title: str) -> None:
    """Counts, rows = ground truth, columns = prediction."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    cm = np.asarray(cm)
    k = cm.shape[0]
    size = min(12.0, 2.5 + 0.5 * k)
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), [str(c) for c in class_names], rotation=45, ha="right")
    ax.set_yticks(range(k), [str(c) for c in class_names])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("ground truth class")
    ax.set_title(title)
    if k <= 20:
        vmax = cm.max() if cm.size else 0
        for r in range(k):
            for c in range(k):
                ax.text(c, r, str(int(cm[r, c])), ha="center", va="center",
                        color="white" if cm[r, c] > vmax / 2 else "black", fontsize=9)
    fig.tight_layout()
    _atomic_savefig(fig, path)


def _as_display_image(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


MAX_DRAWN_BOXES = 10  # per image, the most confident (results are sorted by confidence)
_CLASS_COLORS = ["tab:red", "tab:blue", "tab:orange", "tab:purple", "tab:cyan", "tab:pink",
                 "tab:olive", "tab:brown"]


def _boxes(d: dict, id_key: str) -> list[tuple[np.ndarray, Any, float]]:
    """(closed polygon as (row, col) rows, class id, confidence) per box of a sample
    (id_key 'bbox_label_id') or a detection result ('bbox_class_id'); rectangle1 or
    rectangle2 keys, whichever the dict has.  rectangle2: phi counter-clockwise from the
    column axis, length1 along phi, length2 across (HALCON's gen_rectangle2)."""
    ids = list(to_tuple(d.get(id_key, [])))
    conf = [float(c) for c in to_tuple(d.get("bbox_confidence", []))] or [1.0] * len(ids)
    out = []
    if "bbox_row1" in d:
        r1, c1, r2, c2 = (np.asarray(to_tuple(d[k]), dtype=float)
                          for k in ("bbox_row1", "bbox_col1", "bbox_row2", "bbox_col2"))
        for i in range(min(len(ids), len(r1))):
            out.append((np.array([[r1[i], c1[i]], [r1[i], c2[i]], [r2[i], c2[i]],
                                  [r2[i], c1[i]], [r1[i], c1[i]]]), ids[i], conf[i]))
    elif "bbox_row" in d:
        r, c, phi, l1, l2 = (np.asarray(to_tuple(d[k]), dtype=float)
                             for k in ("bbox_row", "bbox_col", "bbox_phi", "bbox_length1",
                                       "bbox_length2"))
        for i in range(min(len(ids), len(r))):
            a1 = np.array([-np.sin(phi[i]), np.cos(phi[i])]) * l1[i]  # (row, col) along phi
            a2 = np.array([np.cos(phi[i]), np.sin(phi[i])]) * l2[i]   # across
            ctr = np.array([r[i], c[i]])
            pts = [ctr + a1 + a2, ctr + a1 - a2, ctr - a1 - a2, ctr - a1 + a2, ctr + a1 + a2]
            out.append((np.array(pts), ids[i], conf[i]))
    return out


def draw_predictions(model: Any, dldataset: dict, indices: list[int], path: str,
                     title: str) -> None:
    """Validation images with their prediction (classification: true / predicted label in
    the title; segmentation: image | ground truth | prediction; detection: ground-truth boxes
    dashed green, found boxes solid in their class colour with class name and
    confidence)."""
    from matplotlib.figure import Figure  # noqa: PLC0415

    from ..operators.dl_model import apply_dl_model  # noqa: PLC0415
    from . import evaluate as _evaluate  # noqa: PLC0415

    samples = _evaluate.read_samples(dldataset, indices)
    results = apply_dl_model(model, samples, [])
    names = dict(zip(model.params["class_ids"], model.params["class_names"]))
    seg = model.is_segmentation
    det = model.is_detection
    n = len(samples)
    cols = 3 if seg else min(n, 4)
    rows = n if seg else int(math.ceil(n / cols))
    fig = Figure(figsize=(3 * cols, 3 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    k = max([1] + [int(c) + 1 for c in model.params["class_ids"]])  # colour scale of ids
    for i, (s, r) in enumerate(zip(samples, results)):
        if seg:
            gt = s.get("segmentation_image")
            pred = np.asarray(r["segmentation_image"])
            axes[3 * i].imshow(_as_display_image(s["image"]), cmap="gray")
            axes[3 * i].set_title(f"image {s.get('image_id')}", fontsize=8)
            if gt is not None:
                axes[3 * i + 1].imshow(np.asarray(gt), cmap="tab20", vmin=0, vmax=k)
            axes[3 * i + 1].set_title("ground truth", fontsize=8)
            axes[3 * i + 2].imshow(pred, cmap="tab20", vmin=0, vmax=k)
            axes[3 * i + 2].set_title("prediction", fontsize=8)
        elif det:
            ax = axes[i]
            ax.imshow(_as_display_image(s["image"]), cmap="gray")
            pred_boxes = _boxes(r, "bbox_class_id")
            for poly, cid, conf in pred_boxes[:MAX_DRAWN_BOXES]:  # found: class colour
                color = _CLASS_COLORS[int(cid) % len(_CLASS_COLORS)]
                ax.plot(poly[:, 1], poly[:, 0], color=color, lw=1.2)
                ax.text(poly[0, 1], poly[0, 0], f"{names.get(cid, cid)} {conf:.2f}",
                        color="white", fontsize=6, va="bottom",
                        bbox={"facecolor": color, "alpha": 0.6, "pad": 1, "lw": 0})
            gt_boxes = _boxes(s, "bbox_label_id")
            for poly, _, _ in gt_boxes:  # ground truth on top: dashed green
                ax.plot(poly[:, 1], poly[:, 0], color="lime", lw=1.5, ls="--")
            n_gt = len(gt_boxes)
            ax.set_title(f"image {s.get('image_id')}: {n_gt} true, {len(pred_boxes)} found",
                         fontsize=8)
        else:
            ax = axes[i]
            ax.imshow(_as_display_image(s["image"]), cmap="gray")
            pred = to_tuple(r.get("classification_class_names", []))
            conf = to_tuple(r.get("classification_confidences", []))
            true = names.get(s.get("image_label_id"), s.get("image_label_id"))
            ok = bool(pred) and str(pred[0]) == str(true)
            ax.set_title(f"true {true}\npred {pred[0] if pred else '?'} "
                         f"({float(conf[0]) if conf else float('nan'):.2f})",
                         fontsize=8, color="green" if ok else "red")
    fig.suptitle(title)
    fig.tight_layout()
    _atomic_savefig(fig, path)


def _eval_measures(ctx: TrainContext) -> dict:
    """The evaluation's comparison measures as floats (per-class values averaged)."""
    from .train import _lookup  # noqa: PLC0415

    out = {}
    for k in ctx.train_param["evaluation_comparison_keys"]:
        v = _lookup(ctx.evaluation_result or {}, k)
        if v is not None:
            out[k] = float(np.nanmean(np.asarray(v, dtype=float)))
    return out


class FilesHook(TrainHook):
    """The JSON-lines log, the training plot, the confusion matrix and example predictions
    in ``output_dir`` (see the module docstring)."""

    def __init__(self, opts: dict) -> None:
        self.opts = opts
        self.dir = opts["output_dir"]
        self.records: list[dict] = []
        self._n_infos = 0
        self._log: str | None = None
        self._pending: list[str] = []

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def on_train_begin(self, ctx: TrainContext) -> None:
        try:
            os.makedirs(self.dir, exist_ok=True)
        except OSError as err:
            raise HOperatorError(H_ERR_DL_FILE_WRITE,
                                 f"display output_dir {self.dir!r}: {err}") from None
        self.records = []
        self._n_infos = len(ctx.train_infos)
        log = self.path(LOG_FILE)
        if ctx.iteration > 0 and os.path.isfile(log):  # continuing: keep what was logged
            with open(log, encoding="utf-8") as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue
                    if rec.get("iteration", -1) <= ctx.iteration:
                        self.records.append(rec)
        self._log = log if self.opts["log"] else None
        self._pending = []
        if self._log is not None:  # no file stays open between events (nothing leaks if
            with open(log, "w", encoding="utf-8") as f:  # training ends with an exception)
                f.writelines(json.dumps(rec) + "\n" for rec in self.records)

    def _flush(self) -> None:
        """Append the lines since the last flush (after every epoch and evaluation)."""
        if self._log is not None and self._pending:
            with open(self._log, "a", encoding="utf-8") as f:
                f.writelines(self._pending)
        self._pending = []

    def _emit(self, rec: dict) -> None:
        rec = jsonable(rec)
        self.records.append(rec)
        if self._log is not None:
            self._pending.append(json.dumps(rec) + "\n")

    def _new_infos(self, ctx: TrainContext) -> None:
        for info in ctx.train_infos[self._n_infos:]:
            self._emit({"type": "train_info", **info})
        self._n_infos = len(ctx.train_infos)

    def on_batch_end(self, ctx: TrainContext) -> None:
        tr = ctx.train_result or {}
        loss = float(np.ravel(tr.get("total_loss", np.nan))[0])
        rec = {"type": "iteration", "iteration": ctx.iteration, "epoch": ctx.epoch,
               "loss": loss, "mean_loss": ctx.mean_loss, "batch_size": ctx.batch_size}
        for name in self.opts["plot_params"]:
            v = ctx.model.params.get(name)
            if isinstance(v, (int, float)):
                rec[name] = float(v)
        self._emit(rec)
        self._new_infos(ctx)

    def on_epoch_end(self, ctx: TrainContext) -> None:
        self._new_infos(ctx)
        self._flush()

    def on_evaluation(self, ctx: TrainContext) -> None:
        res = ctx.evaluation_result or {}
        self._emit({"type": "evaluation", "iteration": ctx.iteration, "epoch": ctx.epoch,
                    "comparison_value": ctx.comparison_value, "improved": ctx.improved,
                    "measures": _eval_measures(ctx), "result": res})
        ep = f"{ctx.epoch:.2f}".rstrip("0").rstrip(".")
        cm = res.get("absolute_confusion_matrix")
        if self.opts["confusion_matrix"] and cm is not None and not ctx.model.is_segmentation:
            # HALCON's orientation is rows = predicted: transpose to rows = ground truth
            cm = np.asarray(cm).T
            names = list(ctx.model.params["class_names"])
            title = f"confusion matrix, validation, epoch {ep}"
            draw_confusion_matrix(cm, names, self.path(f"confusion_matrix_{ep}.png"), title)
            draw_confusion_matrix(cm, names, self.path(CONFUSION_FILE), title)
        n = self.opts["num_images"] or 0
        if n > 0:
            from .train import _split_indices  # noqa: PLC0415

            val = _split_indices(list(ctx.dldataset["samples"]), "validation")[:n]
            if val:
                draw_predictions(ctx.model, ctx.dldataset, val, self.path(PREDICTIONS_FILE),
                                 f"validation predictions, epoch {ep}")
        if self.opts["plot"]:
            self._plot(ctx)
        self._flush()

    def _plot(self, ctx: TrainContext) -> None:
        draw_training_plot(self.records, self.path(PLOT_FILE), self.opts["plot_params"],
                           list(ctx.train_param["evaluation_comparison_keys"]),
                           f"{ctx.model.params.get('type', '')} training, epoch "
                           f"{ctx.epoch:.2f}/{ctx.num_epochs:g}")

    def on_train_end(self, ctx: TrainContext) -> None:
        self._new_infos(ctx)
        try:
            if self.opts["plot"]:
                self._plot(ctx)
        finally:
            self._flush()


class LiveHook(TrainHook):
    """The training plot in a window (display live 'true'), from its own records of the
    iterations and evaluations; never writes a file."""

    def __init__(self, opts: dict, interval: float) -> None:
        self.opts, self.interval = opts, interval
        self.records: list[dict] = []
        self.fig = None
        self._last = 0.0

    def on_train_begin(self, ctx: TrainContext) -> None:
        import threading  # noqa: PLC0415
        import warnings  # noqa: PLC0415

        self.records = []
        if threading.current_thread() is not threading.main_thread():
            warnings.warn("halcdl: display live 'true' is ignored outside the main thread "
                          "(GUI toolkits run there only); the PNG plot is still written",
                          stacklevel=2)
            return
        import matplotlib.pyplot as plt  # noqa: PLC0415

        self.fig = plt.figure("halcdl training", figsize=(9, 8))
        plt.show(block=False)
        self._draw(ctx)

    def _draw(self, ctx: TrainContext) -> None:
        if self.fig is None:
            return
        import matplotlib.pyplot as plt  # noqa: PLC0415

        if not plt.fignum_exists(self.fig.number):  # the user closed the window: stop drawing
            self.fig = None
            return
        plot_into(self.fig, self.records, self.opts["plot_params"],
                  list(ctx.train_param["evaluation_comparison_keys"]),
                  f"{ctx.model.params.get('type', '')} training, epoch "
                  f"{ctx.epoch:.2f}/{ctx.num_epochs:g}")
        self.fig.canvas.draw_idle()
        self.fig.canvas.flush_events()
        self._last = time.monotonic()

    def on_batch_end(self, ctx: TrainContext) -> None:
        tr = ctx.train_result or {}
        rec = {"type": "iteration", "iteration": ctx.iteration, "epoch": ctx.epoch,
               "loss": float(np.ravel(tr.get("total_loss", np.nan))[0]),
               "mean_loss": ctx.mean_loss}
        for name in self.opts["plot_params"]:
            v = ctx.model.params.get(name)
            if isinstance(v, (int, float)):
                rec[name] = float(v)
        self.records.append(rec)
        if time.monotonic() - self._last >= self.interval:
            self._draw(ctx)

    def on_evaluation(self, ctx: TrainContext) -> None:
        self.records.append({"type": "evaluation", "epoch": ctx.epoch,
                             "measures": _eval_measures(ctx)})
        self._draw(ctx)

    def on_train_end(self, ctx: TrainContext) -> None:
        self._draw(ctx)
