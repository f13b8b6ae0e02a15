"""CPU acceptance of FFN training: a trained FFN vs the seeded watershed on held-out data.

Evaluates on x 125-250 of ``../shared/data/fib25_s2_train.h5`` (160 x 250 x 125 voxels),
which training never reads (benchmarks/ffn_training_acceptance.yaml trains and validates
on x 0-125 only). Both methods start from the same seeds, google/ffn's PolicyPeaks
(:func:`ffnflow.seeds.sobel_peak_seeds`) on the crop:

- FFN: ffnflow's :class:`~ffnflow.ffn.canvas.Canvas` with the checkpoint and the FIB-25
  reference inference options (the schema's ``ffn.inference`` defaults; ``--inference``
  changes some, e.g. ``'{"disco_seed_threshold": -1}'``, best on x 0-125's held-out crop
  z 112-160, y 0-96), the crop alone;
- baseline: :func:`ffnflow.baselines.seeded_watershed` of the Gaussian-smoothed image,
  sigma 0.5 voxels (chosen on x 0-125: VI sum 5.40 / 5.63 / 6.04 / 5.89 for sigma
  0.5 / 1 / 2 / 3).

Metrics: :func:`ffnflow.metrics.segmentation_metrics` (VI split/merge in bits, adapted Rand
error; ground-truth 0 ignored, unlabelled FFN voxels count as one segment). Training facts
(steps, FOVs, minutes) are read from the checkpoint. The last line is one JSON object.

Usage (repository root):
  .venv/bin/python benchmarks/ffn_training_acceptance.py --checkpoint results/ffn_training_acceptance/ffn.pt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from ffnflow.baselines import seeded_watershed
from ffnflow.ffn.canvas import Canvas, InferenceOptions
from ffnflow.ffn.model import load_checkpoint
from ffnflow.ffn.predictor import FovPredictor
from ffnflow.metrics import segmentation_metrics
from ffnflow.seeds import sobel_peak_seeds

REPO = Path(__file__).resolve().parents[1]
FIB25 = REPO.parent / "shared" / "data" / "fib25_s2_train.h5"


def rounded(metrics: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", default=str(FIB25))
    parser.add_argument("--x", type=int, nargs=2, default=(125, 250), help="x range evaluated")
    parser.add_argument("--sigma", type=float, default=0.5, help="watershed smoothing (voxels)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--save", default=None, help="write both segmentations to this HDF5 file")
    parser.add_argument(
        "--inference",
        default="{}",
        help="inference options changed from the reference ones, JSON, e.g. '{\"disco_seed_threshold\": -1}'",
    )
    args = parser.parse_args()

    with h5py.File(args.data, "r") as f:
        raw = f["raw"][:, :, args.x[0] : args.x[1]]
        labels = f["labels"][:, :, args.x[0] : args.x[1]]
    loaded = load_checkpoint(args.checkpoint)
    norm = loaded.normalization
    image = (raw.astype(np.float32) - norm["image_mean"]) / norm["image_stddev"]
    seeds = sobel_peak_seeds(image)
    print(
        f"crop x {args.x[0]}-{args.x[1]}: {image.shape}, {len(seeds)} PolicyPeaks seeds", flush=True
    )

    t0 = time.perf_counter()
    watershed = seeded_watershed(image, seeds, sigma=args.sigma)
    ws = rounded({**segmentation_metrics(labels, watershed), "wall_s": time.perf_counter() - t0})
    print(f"seeded watershed: {ws}", flush=True)

    predictor = FovPredictor(loaded.model, device="cpu", threads=args.threads)
    inference = json.loads(args.inference)
    canvas = Canvas(image, predictor, InferenceOptions(**inference))
    result = canvas.segment_all(seeds, progress=True)
    ffn = rounded(
        {
            **segmentation_metrics(labels, result.labels),
            "wall_s": result.counters["wall_s"],
            "fov_evaluations": int(result.counters["fov_evaluations"]),
        }
    )
    print(f"FFN: {ffn}", flush=True)
    if args.save:
        with h5py.File(args.save, "w") as f:
            f.create_dataset("ffn", data=result.labels, compression="gzip")
            f.create_dataset("watershed", data=watershed, compression="gzip")

    payload = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    training = payload.get("training", {})
    print(
        json.dumps(
            {
                "ffn": ffn,
                "watershed": ws,
                "beats_baseline": ffn["vi_sum"] < ws["vi_sum"] and ffn["arand"] < ws["arand"],
                "checkpoint": str(args.checkpoint),
                "arch": payload["arch"],
                "training": {
                    k: training.get(k)
                    for k in (
                        "steps_done",
                        "fovs",
                        "wall_s",
                        "batch_size",
                        "optimizer",
                        "learning_rate",
                    )
                },
                "inference": inference,
                "seeds": len(seeds),
                "crop_x": list(args.x),
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
