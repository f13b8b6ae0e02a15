"""Training throughput of ffnflow's FFN loop: FOVs (examples x moves) per second.

Runs the real training loop (partition-balanced examples made in the background thread,
FOV moves, one optimisation step per batch of FOVs, logits written back into the seeds)
for ``--seconds`` after ``--warmup`` steps, on FIB-25 training_sample2 (x 0-125) when
``../shared/data/fib25_s2_train.h5`` exists, else on a synthetic labelled volume. The last
line is one JSON object::

    {"fov_per_s": ..., "steps_per_s": ..., "device": "cuda", "precision": "bf16",
     "batch_size": 16, "arch": {...}, "threads": 16, "gflop_per_fov_step": ..., "tflops": ...}

``gflop_per_fov_step`` counts forward + backward (3x the forward FLOPs).

Usage: python benchmarks/ffn_training.py [--device auto|cpu|cuda] [--precision fp32|bf16]
       [--batch 4] [--seconds 30] [--small]   (--small: depth 4, 16 features, FOV 17^3, deltas 4)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ffnflow.ffn.model import ModelArch
from ffnflow.ffn.training.coordinates import ExampleCoordinates, example_margin, region_coordinates
from ffnflow.ffn.training.examples import TrainingVolume
from ffnflow.ffn.training.partitions import DEFAULT_THRESHOLDS
from ffnflow.ffn.training.prefetch import Prefetcher
from ffnflow.ffn.training.sampler import BalancedSampler
from ffnflow.ffn.training.trainer import Trainer, TrainingOptions

REPO = Path(__file__).resolve().parents[1]
FIB25 = REPO.parent / "shared" / "data" / "fib25_s2_train.h5"


def synthetic_volume(shape=(128, 128, 128), cells=300, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Voronoi cells with dark boundaries: raw uint8 and labels (z, y, x)."""
    from scipy import ndimage
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    points = rng.uniform(0, shape, size=(cells, 3))
    grid = np.indices(shape).reshape(3, -1).T
    labels = (cKDTree(points).query(grid)[1] + 1).reshape(shape).astype(np.uint32)
    boundary = ndimage.grey_dilation(labels, size=2) != ndimage.grey_erosion(labels, size=2)
    raw = np.where(boundary, 70.0, 170.0) + rng.normal(0, 15, shape)
    return np.clip(raw, 0, 255).astype(np.uint8), labels


def load_volume(use_synthetic: bool) -> tuple[str, np.ndarray, np.ndarray]:
    if FIB25.exists() and not use_synthetic:
        import h5py

        with h5py.File(FIB25, "r") as f:
            return "fib25_s2_train x 0-125", f["raw"][:, :, :125], f["labels"][:, :, :125]
    raw, labels = synthetic_volume()
    return "synthetic 128^3", raw, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=int, default=5, help="steps before timing starts")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--small", action="store_true", help="depth 4, 16 features, FOV 17^3, deltas 4"
    )
    parser.add_argument(
        "--synthetic", action="store_true", help="synthetic volume even if FIB-25 exists"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    arch = (
        ModelArch(depth=4, features=16, fov_size_zyx=(17,) * 3, deltas_zyx=(4,) * 3)
        if args.small
        else ModelArch()
    )
    name, raw, labels = load_volume(args.synthetic)
    margin = example_margin(arch.fov_size_zyx, arch.deltas_zyx)
    coords, partition = region_coordinates(
        labels, (0, 0, 0), margin, DEFAULT_THRESHOLDS, 1000, 200000
    )
    options = TrainingOptions(
        arch=arch, batch_size=args.batch, device=args.device, precision=args.precision
    )
    trainer = Trainer(
        [TrainingVolume(name, raw, labels, (0, 0, 0))],
        BalancedSampler([ExampleCoordinates(name, coords, partition)]),
        options,
    )
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    with Prefetcher(trainer.make_example, 0, depth=4 * args.batch) as source:
        trainer.source = source
        for _ in range(args.warmup):
            trainer.train_step()
        sync()
        fovs0, steps0, t0 = trainer.fovs, trainer.step, time.perf_counter()
        while time.perf_counter() - t0 < args.seconds:
            loss = trainer.train_step()
        float(loss)
        sync()
        elapsed = time.perf_counter() - t0
        trainer.source = None
    fovs, steps = trainer.fovs - fovs0, trainer.step - steps0
    gflop = 3 * arch.flops_per_fov / 1e9
    result = {
        "fov_per_s": round(fovs / elapsed, 3),
        "steps_per_s": round(steps / elapsed, 3),
        "device": str(trainer.device),
        "precision": args.precision,
        "batch_size": args.batch,
        "arch": {
            "depth": arch.depth,
            "features": arch.features,
            "fov_size_zyx": list(arch.fov_size_zyx),
            "deltas_zyx": list(arch.deltas_zyx),
        },
        "threads": torch.get_num_threads(),
        "gflop_per_fov_step": round(gflop, 3),
        "tflops": round(fovs / elapsed * gflop / 1e3, 4),
        "examples_per_fov": round(trainer.next_example / max(trainer.fovs, 1), 4),
        "data": name,
        "torch": torch.__version__,
    }
    if trainer.device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(trainer.device)
    print(
        f"{name}: {fovs} FOVs in {elapsed:.1f} s on {trainer.device} ({args.precision}, batch {args.batch})"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
