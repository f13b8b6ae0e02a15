"""Evaluate FFN checkpoints side by side on FIB-25's evaluation region (x 125-250).

For each checkpoint: PolicyPeaks seeds, flood filling with the reference options (one
object at a time, ``--precision``, on the CPU unless ``--device``), then VI split/merge
and adapted Rand error against the ground truth (ground-truth 0 ignored), fraction
labelled and FOVs. Used for the GPU fine-tuning run: the checkpoint it wrote against the
published weights it started from. Nothing is tuned here.

Usage: python benchmarks/checkpoint_eval.py CKPT [CKPT ...] [--z 0 100] [--y 0 150]
       [--precision bf16] [--out benchmarks/results/finetune_eval.txt]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import h5py
import numpy as np

from ffnflow.ffn.canvas import Canvas, InferenceOptions
from ffnflow.ffn.model import load_checkpoint
from ffnflow.ffn.predictor import FovPredictor
from ffnflow.metrics import segmentation_metrics
from ffnflow.seeds import sobel_peak_seeds

REPO = Path(__file__).resolve().parents[1]
VOLUME = REPO.parent / "shared" / "data" / "fib25_s2_train.h5"
EVAL_X = (125, 250)


def evaluate(checkpoint: str, raw: np.ndarray, labels: np.ndarray, args) -> dict:
    loaded = load_checkpoint(checkpoint)
    norm = loaded.normalization
    image = (raw.astype(np.float32) - norm["image_mean"]) / norm["image_stddev"]
    seeds = [tuple(int(v) for v in s) for s in sobel_peak_seeds(image)]
    predictor = FovPredictor(loaded.model, args.device, args.precision, args.threads)
    t0 = time.perf_counter()
    result = Canvas(image, predictor, InferenceOptions()).segment_all(seeds)
    figures = segmentation_metrics(labels, result.labels)
    figures.update(
        fov_evaluations=int(result.counters["fov_evaluations"]),
        wall_s=round(time.perf_counter() - t0, 1),
        seeds=len(seeds),
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--z", type=int, nargs=2, default=[0, 160])
    parser.add_argument("--y", type=int, nargs=2, default=[0, 250])
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="also write the table (and .json) here")
    args = parser.parse_args()
    roi = (slice(*args.z), slice(*args.y), slice(*EVAL_X))
    with h5py.File(VOLUME, "r") as f:
        raw, labels = f["raw"][roi], f["labels"][roi]
    lines = [
        f"fib25_s2_train.h5 z {args.z[0]}-{args.z[1]}, y {args.y[0]}-{args.y[1]}, "
        f"x {EVAL_X[0]}-{EVAL_X[1]} ({'x'.join(map(str, raw.shape))}), {args.precision}, "
        f"{args.device}, reference options, PolicyPeaks seeds",
        f"{'checkpoint':<40} {'VI split':>8} {'VI merge':>8} {'VI sum':>7} {'ARAND':>6} "
        f"{'labelled':>8} {'FOVs':>6} {'wall s':>7}",
    ]
    rows = {}
    for ckpt in args.checkpoints:
        m = evaluate(ckpt, raw, labels, args)
        rows[ckpt] = m
        lines.append(
            f"{Path(ckpt).name:<40} {m['vi_split']:8.3f} {m['vi_merge']:8.3f} {m['vi_sum']:7.3f} "
            f"{m['arand']:6.3f} {100 * m['fraction_segmented']:7.1f}% {m['fov_evaluations']:6d} "
            f"{m['wall_s']:7.0f}"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
