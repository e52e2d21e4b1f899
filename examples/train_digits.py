"""Train HALCON's 'compact' classifier on scikit-learn's digits through the operators.

    python examples/train_digits.py [--epochs 12] [--size 32] [--threads N] [--out DIR]

The 1797 8x8 digit images bundled with scikit-learn are upscaled to --size pixels, scaled
to the range the pretrained classifiers expect (-127..128), given 3 channels, and split
80/20 (stratified). The model is trained with train_dl_model_batch, one call per batch,
shuffling every epoch; the held-out 20 % is classified with apply_dl_model. Nothing is
written unless --out is given (then a small JSON summary goes there).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from skimage.transform import resize
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import halcdl as ha


def digits_samples(size: int, channels: int = 3, seed: int = 0):
    """Stratified 80/20 split of sklearn's digits as DLSample dicts ready for the model:
    (size, size, channels) float32 images in -127..128 and image_label_id 0..9."""
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0                  # 0..1, 8x8
    images = np.stack([resize(im, (size, size), order=1, anti_aliasing=False)
                       for im in images]).astype(np.float32)
    images = images * 255.0 - 127.0                                    # -127..128
    images = np.repeat(images[..., None], channels, axis=-1)
    idx_train, idx_test = train_test_split(np.arange(len(images)), test_size=0.2,
                                           stratify=digits.target, random_state=seed)

    def samples(idx):
        return [{"image": np.ascontiguousarray(images[i]),
                 "image_label_id": int(digits.target[i])} for i in idx]
    return samples(idx_train), samples(idx_test)


def train_compact(train, test, *, size=32, epochs=12, batch_size=32, learning_rate=0.01,
                  momentum=0.9, weight_prior=1e-4, seed=42, log=print):
    """Train compact on `train`, return (model, test accuracy, per-epoch history)."""
    ha.set_system("seed_rand", seed)
    model = ha.read_dl_model("pretrained_dl_classifier_compact.hdl")
    ha.set_dl_model_param(model, "image_dimensions", [size, size, 3])
    ha.set_dl_model_param(model, "class_ids", list(range(10)))
    ha.set_dl_model_param(model, "class_names", [str(d) for d in range(10)])
    ha.set_dl_model_param(model, "batch_size", batch_size)
    ha.set_dl_model_param(model, "solver_type", "sgd")
    ha.set_dl_model_param(model, "learning_rate", learning_rate)
    ha.set_dl_model_param(model, "momentum", momentum)
    ha.set_dl_model_param(model, "weight_prior", weight_prior)

    rng = np.random.default_rng(seed)
    steps = len(train) // batch_size            # HALCON: floor(samples / batch size)
    history = []
    for epoch in range(1, epochs + 1):
        if epoch == int(0.75 * epochs) + 1:     # a 'change' strategy: lr / 10 at 75 %
            ha.set_dl_model_param(model, "learning_rate", learning_rate / 10)
        t0 = time.perf_counter()
        order = rng.permutation(len(train))
        losses = []
        for s in range(steps):
            batch = [train[i] for i in order[s * batch_size:(s + 1) * batch_size]]
            result = ha.train_dl_model_batch(model, batch)
            losses.append(float(np.ravel(result["total_loss"])[0]))
        acc = accuracy(model, test)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "test_accuracy": acc,
                        "seconds": time.perf_counter() - t0})
        log(f"epoch {epoch:3d}/{epochs}  loss {np.mean(losses):.4f}  "
            f"test accuracy {100 * acc:6.2f} %  ({time.perf_counter() - t0:.1f} s)")
    return model, accuracy(model, test), history


def accuracy(model, samples) -> float:
    results = ha.apply_dl_model(model, samples, [])
    hits = sum(int(r["classification_class_ids"][0] == s["image_label_id"])
               for r, s in zip(results, samples))
    return hits / len(samples)


def main(argv=None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--size", type=int, default=32, help="image width = height (>= 15)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=0, help="0: all cores")
    p.add_argument("--out", default=None, help="folder for a JSON summary (optional)")
    args = p.parse_args(argv)

    if args.threads:
        ha.set_system("thread_num", args.threads)
    t0 = time.perf_counter()
    train, test = digits_samples(args.size, seed=0)
    print(f"digits: {len(train)} training and {len(test)} test images, "
          f"{args.size}x{args.size}x3, range -127..128")
    model, acc, history = train_compact(train, test, size=args.size, epochs=args.epochs,
                                        batch_size=args.batch_size, learning_rate=args.lr,
                                        seed=args.seed)
    elapsed = time.perf_counter() - t0
    print(f"test accuracy: {100 * acc:.2f} % on {len(test)} held-out images "
          f"({elapsed:.0f} s)")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "train_digits.json"), "w") as f:
            json.dump({"test_accuracy": acc, "seconds": elapsed, "history": history,
                       "args": vars(args)}, f, indent=2)
    ha.clear_dl_model(model)
    return acc


if __name__ == "__main__":
    main()
