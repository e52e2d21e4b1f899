"""The ``halcdl`` command line (console script and ``python -m halcdl``).

::

    halcdl train IMAGE_FOLDER | DATASET.hdict [--model compact|enhanced|...|FILE.hdl]
                 [--epochs N] [--image-size W[xH]] [--batch-size N|auto] [--out DIR]
                 [--seed S] [--early-stopping N] [--learning-rate LR]
                 [--lr-schedule constant|cosine] [--resume] [--quiet]
    halcdl evaluate MODEL DATASET [--split all|train|validation|test] [--json]
    halcdl predict MODEL IMAGE... [--json] [--top K]
    halcdl info MODEL [--json]
    halcdl sample-images FOLDER [--per-class N] [--size S] [--seed S]

Every command runs the workflow procedures (read_dl_dataset_classification,
split_dl_dataset, create_dl_preprocess_param_from_model, preprocess_dl_dataset,
create_dl_train_param, train_dl_model, evaluate_dl_model, apply_dl_model).  Errors are one
line on stderr (``halcdl: error: ...``) and exit code 1 (2 for a usage error), never a
traceback; ``HALCDL_DEBUG=1`` shows the traceback.  See docs/cli.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any

__all__ = ["main"]

MODELS = {
    "compact": "pretrained_dl_classifier_compact.hdl",
    "enhanced": "pretrained_dl_classifier_enhanced.hdl",
    "resnet18": "pretrained_dl_classifier_resnet18.hdl",
    "resnet50": "pretrained_dl_classifier_resnet50.hdl",
    "mobilenet_v2": "pretrained_dl_classifier_mobilenet_v2.hdl",
    "alexnet": "pretrained_dl_classifier_alexnet.hdl",
}


class CLIError(Exception):
    """A user-facing error: its message is printed as one line."""


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def _image_size(text: str) -> tuple[int, int]:
    try:
        parts = text.lower().split("x")
        if len(parts) == 1:
            w = h = int(parts[0])
        elif len(parts) == 2:
            w, h = int(parts[0]), int(parts[1])
        else:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"image size must be W or WxH, got {text!r}") \
            from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"image size must be positive, got {text!r}")
    return w, h


def _batch_size(text: str) -> Any:
    if text == "auto":
        return "auto"
    try:
        b = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch size must be an integer or 'auto', got "
                                         f"{text!r}") from None
    if b < 1:
        raise argparse.ArgumentTypeError(f"batch size must be >= 1, got {b}")
    return b


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {v}")
    return v


def _load_model(spec: str):
    """A zoo name (compact, enhanced, ...), a zoo file name, or a model file."""
    import halcdl as ha  # noqa: PLC0415

    name = MODELS.get(spec, spec)
    if name not in MODELS.values() and not os.path.exists(name):
        raise CLIError(f"unknown model {spec!r}: not a model file and not one of "
                       f"{', '.join(MODELS)}")
    if os.path.isdir(name):
        raise CLIError(f"model {spec!r} is a folder, not a model file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no pretrained weights" is said in docs/cli.md
        return ha.read_dl_model(name)


def _samples_list(ds: dict) -> list:
    s = ds.get("samples", [])
    return s if isinstance(s, list) else [s]  # a one-sample dataset read back from .hdict


def _read_dataset(source: str) -> dict:
    """A classification dataset from an image folder (one sub-folder per class) or a
    DLDataset .hdict file."""
    from .workflow.dataset import read_dl_dataset_classification  # noqa: PLC0415
    from .workflow.images import is_image_file  # noqa: PLC0415

    if not os.path.exists(source):
        raise CLIError(f"dataset {source!r} not found")
    if os.path.isfile(source):
        if not source.lower().endswith(".hdict"):
            raise CLIError(f"dataset {source!r} must be an image folder or a .hdict file")
        from .io.hdict import read_hdict  # noqa: PLC0415

        ds = read_hdict(source)
        if not isinstance(ds, dict) or "samples" not in ds:
            raise CLIError(f"{source!r} holds no DLDataset (a dict with 'samples')")
        ds["samples"] = _samples_list(ds)
        for key in ("class_ids", "class_names"):
            v = ds.get(key)
            if v is not None and not isinstance(v, list):
                ds[key] = [v]
        base = os.path.dirname(os.path.abspath(source))
        for key in ("image_dir", "dlsample_dir"):
            if isinstance(ds.get(key), str) and not os.path.isabs(ds[key]):
                cand = os.path.join(base, ds[key])
                if os.path.isdir(cand):
                    ds[key] = cand
        return ds
    classes = sorted(d for d in os.listdir(source) if os.path.isdir(os.path.join(source, d))
                     and not d.startswith("."))
    if not classes:
        raise CLIError(f"image folder {source!r} has no class folders (one sub-folder of "
                       f"images per class)")
    for c in classes:
        folder = os.path.join(source, c)
        has = any(is_image_file(f) for _, _, files in os.walk(folder) for f in files)
        if not has:
            raise CLIError(f"class folder {folder!r} holds no images")
    if len(classes) < 2:
        raise CLIError(f"image folder {source!r} has one class folder ({classes[0]!r}); "
                       f"classification needs at least 2")
    ds = read_dl_dataset_classification(source, "last_folder")
    _check_images(ds)
    return ds


def _check_images(ds: dict) -> None:
    """Every image opens (Pillow verifies the file): names the first that does not."""
    from PIL import Image  # noqa: PLC0415

    for s in _samples_list(ds):
        path = os.path.join(ds.get("image_dir", ""), str(s["image_file_name"]))
        try:
            with Image.open(path) as im:
                im.verify()
        except Exception as err:  # noqa: BLE001  (Pillow raises many kinds)
            raise CLIError(f"unreadable image {path!r}: {type(err).__name__}: {err}") \
                from None


def _preprocess_param(m):
    from .workflow.preprocess import create_dl_preprocess_param_from_model  # noqa: PLC0415

    return create_dl_preprocess_param_from_model(m, "none", "full_domain", [], [], [])


def _preprocess_dataset(ds: dict, m, data_dir: str) -> dict:
    """Preprocess ``ds`` for ``m`` into ``data_dir`` unless it already is for this model."""
    from .workflow.preprocess import preprocess_dl_dataset  # noqa: PLC0415

    pp = ds.get("preprocess_param")
    if ds.get("dlsample_dir") and isinstance(pp, dict):
        p = m.params
        want = (p["image_width"], p["image_height"], p["image_num_channels"])
        got = (pp.get("image_width"), pp.get("image_height"), pp.get("image_num_channels"))
        if want == got:
            return ds
    raw = {k: v for k, v in ds.items() if k not in ("dlsample_dir", "preprocess_param")}
    raw["samples"] = [{k: v for k, v in s.items() if k != "dlsample_file_name"}
                      for s in _samples_list(ds)]
    if not raw.get("image_dir") or not os.path.isdir(str(raw["image_dir"])):
        raise CLIError("the dataset is preprocessed for another image size and its raw "
                       "images ('image_dir') are not available")
    preprocess_dl_dataset(raw, data_dir, _preprocess_param(m),
                          {"overwrite_files": "true", "show_progress": "false"})
    return raw


def _model_classes(m, ds: dict) -> None:
    import halcdl as ha  # noqa: PLC0415

    ids, names = ds.get("class_ids"), ds.get("class_names")
    if not ids or not names:
        raise CLIError("the dataset has no class_ids / class_names")
    ha.set_dl_model_param(m, "class_ids", list(ids))
    ha.set_dl_model_param(m, "class_names", [str(n) for n in names])


def _print_table(rows: list[list[str]], out=None) -> None:
    out = out or sys.stdout
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip(), file=out)


def _summary(result: dict, keys: tuple = ("top1_error", "precision", "recall", "f_score",
                                          "mean_iou", "pixel_accuracy")) -> dict:
    import numpy as np  # noqa: PLC0415

    out = {}
    for k in keys:
        if k in result:
            v = np.asarray(result[k], dtype=float)
            out[k] = float(np.nanmean(v)) if v.size else None
    return out


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    import halcdl as ha  # noqa: PLC0415

    from .workflow.display import jsonable  # noqa: PLC0415
    from .workflow.train import read_info  # noqa: PLC0415

    out = os.path.abspath(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise CLIError(f"--out {args.out!r} is a file, not a folder")
    ds = _read_dataset(args.source)
    ha.set_system("seed_rand", int(args.seed))
    m = _load_model(args.model)
    _model_classes(m, ds)
    if args.image_size:
        w, h = args.image_size
        ha.set_dl_model_param(m, "image_width", w)
        ha.set_dl_model_param(m, "image_height", h)
    ha.set_dl_model_param(m, "solver_type", args.solver)
    if args.learning_rate is not None:
        ha.set_dl_model_param(m, "learning_rate", float(args.learning_rate))
    samples = _samples_list(ds)
    if not all("split" in s for s in samples):
        from .workflow.dataset import split_dl_dataset  # noqa: PLC0415

        split_dl_dataset(ds, 70, 15, [])
    os.makedirs(out, exist_ok=True)
    ds = _preprocess_dataset(ds, m, os.path.join(out, "data"))
    n_train = sum(1 for s in _samples_list(ds) if s.get("split") == "train")
    if n_train == 0:
        raise CLIError("the dataset has no 'train' samples")
    names = ["serialize", "display"]
    ser = [{"type": "best", "basename": os.path.join(out, "model_best")},
           {"type": "final", "basename": os.path.join(out, "model_final")},
           {"type": "current", "basename": os.path.join(out, "model_current")}]
    values: list = [ser, {"output_dir": out, "progress": "none" if args.quiet else "bar",
                          "live": "true" if args.live else "false"}]
    if args.batch_size is not None:
        b = args.batch_size
        if b != "auto" and b > n_train:
            b = n_train
        names.append("batch_size")
        values.append(b)
    else:  # the model's batch size, but at least 8 (the zoo's default is 1) and at most n_train
        ha.set_dl_model_param(m, "batch_size", min(max(int(m.params["batch_size"]), 8), n_train))
    if args.lr_schedule == "cosine":
        lr = float(ha.get_dl_model_param_s(m, "learning_rate"))
        names.append("schedule")
        values.append([{"model_param": "learning_rate", "type": "cosine",
                        "final_value": lr / 100},
                       {"model_param": "learning_rate", "type": "warmup",
                        "epochs": min(1.0, int(args.epochs) / 10)}])
    if args.early_stopping:
        names.append("early_stopping")
        values.append({"patience": int(args.early_stopping), "restore_best": "true"})
    tp = ha.create_dl_train_param(m, int(args.epochs), 1, "true", int(args.seed), names,
                                  values)
    start = "resume" if args.resume else 0
    _, infos, evals = ha.train_dl_model(ds, m, tp, start)
    # the evaluation summary: the best model on the test split (validation when none)
    best_file = os.path.join(out, "model_best.hdl")
    best = _load_model(best_file) if os.path.isfile(best_file) else m
    splits = {s.get("split") for s in _samples_list(ds)}
    split = "test" if "test" in splits else "validation"
    summary: dict = {"epochs": float(infos[-1]["epoch"]) if infos else 0.0,
                     "stop_reason": infos[-1].get("stop_reason") if infos else None,
                     "best_model": best_file if best is not m else None,
                     "final_model": os.path.join(out, "model_final.hdl"),
                     "class_names": [str(c) for c in ds["class_names"]]}
    if os.path.isfile(best_file + ""):
        binfo = read_info(os.path.join(out, "model_best_info.hdict"))
        summary["best_epoch"] = binfo.get("epoch")
    if split in splits:
        result, _ = ha.evaluate_dl_model(ds, best, "split", split, {"measures": "all"})
        summary["split"] = split
        summary["measures"] = _summary(result)
        summary["absolute_confusion_matrix"] = result.get("absolute_confusion_matrix")
    with open(os.path.join(out, "evaluation.json"), "w", encoding="utf-8") as f:
        json.dump(jsonable(summary), f, indent=2)
    print(f"trained {summary['epochs']:g} epochs; files in {out}")
    if "measures" in summary:
        print(f"{split}: " + "  ".join(f"{k} {v:.4f}" for k, v in summary["measures"].items()
                                       if v is not None))
    return 0


def cmd_evaluate(args) -> int:
    import tempfile  # noqa: PLC0415

    import halcdl as ha  # noqa: PLC0415

    from .workflow.display import jsonable  # noqa: PLC0415

    m = _load_model(args.model)
    ds = _read_dataset(args.dataset)
    with tempfile.TemporaryDirectory(prefix="halcdl_eval_") as tmp:
        ds = _preprocess_dataset(ds, m, os.path.join(tmp, "data"))
        if args.split == "all":
            result, _ = ha.evaluate_dl_model(ds, m, "sample_indices",
                                             list(range(len(_samples_list(ds)))),
                                             {"measures": "all"})
        else:
            if not any(s.get("split") == args.split for s in _samples_list(ds)):
                raise CLIError(f"the dataset has no samples of split {args.split!r}")
            result, _ = ha.evaluate_dl_model(ds, m, "split", args.split, {"measures": "all"})
    summary = _summary(result)
    if args.json:
        print(json.dumps(jsonable({"measures": summary, "result": result})))
    else:
        _print_table([["measure", "value"]] + [[k, f"{v:.4f}"] for k, v in summary.items()
                                               if v is not None])
    return 0


def cmd_predict(args) -> int:
    import halcdl as ha  # noqa: PLC0415

    from .workflow.dataset import gen_dl_samples_from_images  # noqa: PLC0415
    from .workflow.images import read_image  # noqa: PLC0415
    from .workflow.preprocess import preprocess_dl_samples  # noqa: PLC0415

    m = _load_model(args.model)
    images = []
    for path in args.images:
        if not os.path.isfile(path):
            raise CLIError(f"image {path!r} not found")
        try:
            images.append(read_image(path))
        except ha.HOperatorError as err:
            raise CLIError(f"unreadable image {path!r}: {err}") from None
    samples = gen_dl_samples_from_images(images)
    preprocess_dl_samples(samples, _preprocess_param(m))
    results = ha.apply_dl_model(m, samples, [])
    rows = []
    for path, r in zip(args.images, results):
        if m.is_segmentation:
            import numpy as np  # noqa: PLC0415

            seg = np.asarray(r["segmentation_image"])
            ids, counts = np.unique(seg, return_counts=True)
            rows.append({"image": path, "class_pixel_fractions": {
                int(i): float(c) / seg.size for i, c in zip(ids, counts)}})
        else:
            k = int(args.top)
            rows.append({"image": path,
                         "class_names": [str(x) for x in r["classification_class_names"][:k]],
                         "class_ids": [int(x) for x in r["classification_class_ids"][:k]],
                         "confidences": [float(x) for x in
                                         r["classification_confidences"][:k]]})
    if args.json:
        print(json.dumps(rows))
    elif m.is_segmentation:
        _print_table([["image", "class: pixel fraction"]] + [
            [r["image"], " ".join(f"{i}: {f:.3f}" for i, f in r["class_pixel_fractions"].items())]
            for r in rows])
    else:
        _print_table([["image", "class", "confidence"]] + [
            [r["image"], r["class_names"][0], f"{r['confidences'][0]:.4f}"] for r in rows])
    return 0


# four texture classes (512 × 512 gray pictures that ship with scikit-image), as in
# examples/train_folder.py: tiles of one picture look alike, so the classes can be learned
SAMPLE_IMAGES = ("brick", "grass", "gravel", "moon")


def cmd_sample_images(args) -> int:
    """A classification folder from scikit-image's bundled pictures: one class per picture,
    random square tiles (seeded), as PNG."""
    import numpy as np  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    try:
        import skimage.data as skdata  # noqa: PLC0415
    except ImportError:
        raise CLIError("sample-images needs scikit-image (pip install scikit-image)") from None
    if os.path.exists(args.folder) and os.listdir(args.folder):
        raise CLIError(f"folder {args.folder!r} exists and is not empty")
    rng = np.random.default_rng(int(args.seed))
    size = int(args.size)
    for name in SAMPLE_IMAGES:
        img = getattr(skdata, name)()
        h, w = img.shape[:2]
        if size > min(h, w):
            raise CLIError(f"--size {size} is larger than the picture {name!r} ({w}x{h})")
        os.makedirs(os.path.join(args.folder, name), exist_ok=True)
        for i in range(int(args.per_class)):
            r, c = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
            tile = np.ascontiguousarray(img[r:r + size, c:c + size])
            Image.fromarray(tile).save(os.path.join(args.folder, name, f"{name}_{i:03d}.png"))
    print(f"{len(SAMPLE_IMAGES)} classes x {args.per_class} images in {args.folder}")
    return 0


def cmd_info(args) -> int:
    import halcdl as ha  # noqa: PLC0415

    m = _load_model(args.model)
    names = ("type", "image_width", "image_height", "image_num_channels", "image_range_min",
             "image_range_max", "batch_size", "learning_rate", "momentum", "weight_prior",
             "solver_type", "runtime")
    params = {}
    for n in names:
        try:
            v = ha.get_dl_model_param(m, n)
        except ha.HOperatorError:
            continue
        params[n] = v[0] if len(v) == 1 else v
    layers = [{"name": str(n.get("name", "")), "op": str(n.get("op", ""))}
              for n in m.spec if isinstance(n, dict)]
    info = {"file": args.model, "params": params,
            "class_ids": [int(c) for c in m.params["class_ids"]],
            "class_names": [str(c) for c in m.params["class_names"]],
            "num_layers": len(layers),
            "num_trainable_params": int(m.core.num_trainable_params()),
            "layers": layers, "meta_data": m.params.get("meta_data", {})}
    if args.json:
        from .workflow.display import jsonable  # noqa: PLC0415

        print(json.dumps(jsonable(info)))
        return 0
    print(f"model {args.model}")
    _print_table([["parameter", "value"]] + [[k, str(v)] for k, v in params.items()])
    print(f"classes ({len(info['class_ids'])}): " + ", ".join(
        f"{i}={n}" for i, n in zip(info["class_ids"], info["class_names"])))
    print(f"layers ({len(layers)}), {info['num_trainable_params']} trainable parameters:")
    print(str(m.core.summary()).rstrip())
    return 0


# --------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit code 2
        self.exit(2, f"halcdl: error: {message} (see halcdl {self.prog.split()[-1]} -h)\n"
                  if " " in self.prog else f"halcdl: error: {message} (see halcdl -h)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="halcdl", description="HALCON-style deep learning from the command line")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="train a classifier on an image folder or a dataset")
    t.add_argument("source", help="image folder (one sub-folder per class) or DATASET.hdict")
    t.add_argument("--model", default="compact",
                   help=f"{' | '.join(MODELS)} | a .hdl file (default compact)")
    t.add_argument("--epochs", type=_positive_int, default=10)
    t.add_argument("--image-size", type=_image_size, default=None, metavar="W[xH]")
    t.add_argument("--batch-size", type=_batch_size, default=None, metavar="N|auto")
    t.add_argument("--learning-rate", type=float, default=None)
    t.add_argument("--solver", default="adam", choices=("adam", "sgd"),
                   help="solver_type (default adam: trains the randomly initialised zoo "
                        "models from scratch with its default learning rate 0.001)")
    t.add_argument("--lr-schedule", default="constant", choices=("constant", "cosine"),
                   help="cosine: linear warm-up (first 10%% of the epochs, at most 1), then "
                   "cosine decay to 1%% of the learning rate")
    t.add_argument("--out", default="halcdl_training", metavar="DIR")
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--early-stopping", type=_positive_int, default=None, metavar="N",
                   help="stop after N evaluations without improvement, keep the best")
    t.add_argument("--resume", action="store_true",
                   help="continue the training saved in --out")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--live", action="store_true",
                   help="also show the training plot in a window (needs a display)")
    t.set_defaults(func=cmd_train)
    e = sub.add_parser("evaluate", help="evaluate a model on a dataset")
    e.add_argument("model")
    e.add_argument("dataset")
    e.add_argument("--split", default="all", choices=("all", "train", "validation", "test"))
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_evaluate)
    pr = sub.add_parser("predict", help="classify images")
    pr.add_argument("model")
    pr.add_argument("images", nargs="+", metavar="IMAGE")
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--top", type=_positive_int, default=1)
    pr.set_defaults(func=cmd_predict)
    si = sub.add_parser("sample-images",
                        help="make a class folder from scikit-image's bundled pictures")
    si.add_argument("folder")
    si.add_argument("--per-class", type=_positive_int, default=40)
    si.add_argument("--size", type=_positive_int, default=32)
    si.add_argument("--seed", type=int, default=0)
    si.set_defaults(func=cmd_sample_images)
    i = sub.add_parser("info", help="parameters, classes and layers of a model")
    i.add_argument("model")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 1 error, 2 usage)."""
    from .errors import HOperatorError  # noqa: PLC0415

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as err:
        print(f"halcdl: error: {err}", file=sys.stderr)
    except HOperatorError as err:
        print(f"halcdl: error: {err.message}", file=sys.stderr)
    except KeyboardInterrupt:
        print("halcdl: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001  (no traceback for users)
        if os.environ.get("HALCDL_DEBUG"):
            raise
        print(f"halcdl: error: {type(err).__name__}: {err}", file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
