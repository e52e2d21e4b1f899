"""Train a classifier on a folder of images with HALCON's workflow procedures.

    python examples/train_folder.py [OUT_DIR] [--epochs 5] [--size 32] [--tiles 40]
                                    [--threads N] [--images FOLDER]

Without --images it first makes a folder of images from pictures bundled with scikit-image:
four classes (brick, grass, gravel, moon), each --tiles non-overlapping 32 × 32 tiles of one
512 × 512 picture, saved as gray PNG files in one folder per class under OUT_DIR/images
(default OUT_DIR: ./out/train_folder). Then it runs the HDevelop classification workflow:

    read_dl_dataset_classification → split_dl_dataset (70/15/15) → read_dl_model (compact)
    → create_dl_preprocess_param_from_model → preprocess_dl_dataset → create_dl_train_param
    (Adam, mirror/rotate augmentation, the learning rate / 10 at 80 % of the epochs, 'best'
    serialization) → train_dl_model (progress printed) → read the best model back
    → evaluate_dl_model on the 'test' split

and prints the evaluation (accuracy, per-class precision/recall, confusion matrix). With
--images FOLDER it trains on your own folder (one sub-folder per class) instead.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time
import warnings

import numpy as np

import halcdl as ha

CLASSES = ("brick", "grass", "gravel", "moon")


def make_image_folder(root: str, tiles: int = 40, tile: int = 32, seed: int = 0) -> str:
    """<root>/<class>/<class>_<k>.png for the four classes; returns root."""
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    grid = 512 // tile
    for name in CLASSES:
        img = getattr(data, name)()
        folder = os.path.join(root, name)
        os.makedirs(folder, exist_ok=True)
        for k, t in enumerate(rng.permutation(grid * grid)[:tiles]):
            r, c = divmod(int(t), grid)
            Image.fromarray(img[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]).save(
                os.path.join(folder, f"{name}_{k:03d}.png"))
    return root


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", default=os.path.join("out", "train_folder"))
    p.add_argument("--images", help="a folder with one sub-folder of images per class")
    p.add_argument("--epochs", type=float, default=5)
    p.add_argument("--size", type=int, default=32, help="model image width and height")
    p.add_argument("--tiles", type=int, default=40, help="images per class to make")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.001)
    p.add_argument("--solver", default="adam", choices=("adam", "sgd"))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: the default)")
    args = p.parse_args(argv)
    if args.threads:
        ha.set_system("thread_num", args.threads)
    warnings.simplefilter("ignore", ha.NotPretrainedWarning)
    t0 = time.perf_counter()

    out = os.path.abspath(args.out)
    images = args.images
    if images is None:
        images = os.path.join(out, "images")
        if os.path.isdir(images):
            shutil.rmtree(images)
        make_image_folder(images, tiles=args.tiles)
        print(f"made {len(CLASSES)} class folders of {args.tiles} PNG images in {images}")
    data_dir = os.path.join(out, "data")

    # --- preprocess ---------------------------------------------------------------------
    ha.set_system("seed_rand", args.seed)
    dataset = ha.read_dl_dataset_classification(images, "last_folder")
    ha.split_dl_dataset(dataset, 70, 15, [])
    model = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    ha.set_dl_model_param(model, "image_dimensions", [args.size, args.size, 1])
    ha.set_dl_model_param(model, "class_ids", dataset["class_ids"])
    ha.set_dl_model_param(model, "class_names", dataset["class_names"])
    preprocess_param = ha.create_dl_preprocess_param_from_model(model, "none", "full_domain",
                                                                [], [], [])
    dataset_file = ha.preprocess_dl_dataset(dataset, data_dir, preprocess_param,
                                            {"overwrite_files": "true"})
    dataset = ha.read_dict(dataset_file, [], [])
    n = {s: sum(1 for x in dataset["samples"] if x["split"] == s)
         for s in ("train", "validation", "test")}
    print(f"dataset: {len(dataset['samples'])} images, classes {dataset['class_names']}, "
          f"split {n}; preprocessed into {data_dir}")

    # --- train --------------------------------------------------------------------------
    ha.set_dl_model_param(model, "batch_size", args.batch_size)
    ha.set_dl_model_param(model, "learning_rate", args.lr)
    ha.set_dl_model_param(model, "solver_type", args.solver)
    ha.set_dl_model_param(model, "momentum", 0.9)
    ha.set_dl_model_param(model, "weight_prior", 1e-4)
    change = {"model_param": "learning_rate", "initial_value": args.lr,
              "epochs": [0.8 * args.epochs], "values": [args.lr * 0.1]}
    serialize = {"type": "best", "basename": os.path.join(data_dir, "model_best")}
    augment = {"augmentation_percentage": 50, "mirror": "rc", "rotate": 90}  # textures: any
    train_param = ha.create_dl_train_param(model, args.epochs, 1, "true", args.seed,
                                           ["augment", "change", "serialize"],
                                           [augment, change, serialize])
    _, train_infos, evaluation_infos = ha.train_dl_model(dataset, model, train_param, 0)

    # --- evaluate -----------------------------------------------------------------------
    best = ha.read_dl_model(os.path.join(data_dir, "model_best.hdl"))
    result, params = ha.evaluate_dl_model(dataset, best, "split", "test", {})
    accuracy = 1.0 - result["top1_error"]
    names = params["class_names"]
    print(f"\nbest model (validation top1_error "
          f"{min(e['result']['top1_error'] for e in evaluation_infos):.3f}) on the "
          f"{params['num_samples']} test images: accuracy {100 * accuracy:.1f} %")
    print("class       precision  recall  f_score")
    for k, name in enumerate(names):
        print(f"{name:10s}  {result['precision_per_class'][k]:9.3f}  "
              f"{result['recall_per_class'][k]:6.3f}  {result['f_score_per_class'][k]:7.3f}")
    print("confusion matrix (rows predicted, columns ground truth):")
    print("          " + " ".join(f"{x[:8]:>8s}" for x in names))
    for k, row in enumerate(np.asarray(result["absolute_confusion_matrix"])):
        print(f"{names[k][:8]:>8s}  " + " ".join(f"{int(v):8d}" for v in row))
    print(f"total {time.perf_counter() - t0:.1f} s; best model: "
          f"{os.path.join(data_dir, 'model_best.hdl')}")
    return {"accuracy": accuracy, "train_infos": train_infos,
            "evaluation_infos": evaluation_infos}


if __name__ == "__main__":
    main()
