"""FOV throughput of an FFN forward pass on this machine: batch 1 vs larger batches.

Evaluates the model on real EM patches (the bundled demo volume by default) and prints
FOVs per second and achieved GFLOP/s per batch size and memory format (NCDHW
``contiguous`` vs ``channels_last``, NDHWC), measured alternately in one run. The last line
is one JSON object::

    {"fov_per_s": {"contiguous": {"1": ..., "4": ...}, "channels_last": {...}},
     "gflop_per_fov": ..., "device": "cpu", "precision": "fp32", "threads": 2,
     "default_memory_format": "channels_last"}

Usage: python benchmarks/fov_throughput.py [--batch-sizes 1 2 4] [--seconds 20]
[--memory-formats contiguous channels_last]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ffnflow.ffn.model import load_checkpoint
from ffnflow.ffn.predictor import FovPredictor
from ffnflow.volumes import read_volume

REPO = Path(__file__).resolve().parents[1]


def random_fovs(
    raw: np.ndarray, fov: tuple[int, int, int], n: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` FOV-sized patches of ``raw`` (z, y, x) at random positions, normalised FIB-25 style."""
    starts = [rng.integers(0, s - f + 1, size=n) for s, f in zip(raw.shape, fov)]
    patches = [raw[z : z + fov[0], y : y + fov[1], x : x + fov[2]] for z, y, x in zip(*starts)]
    return (np.stack(patches).astype(np.float32) - 128.0) / 33.0


def measure(predictor: FovPredictor, images: np.ndarray, batch: int, seconds: float) -> float:
    """FOVs per second for one batch size, after one warm-up pass."""
    pom = np.full(images[:batch].shape, -2.944, dtype=np.float32)  # logit(0.05)
    pom[:, pom.shape[1] // 2, pom.shape[2] // 2, pom.shape[3] // 2] = 2.944
    predictor.predict(images[:batch], pom)
    done, t0, i = 0, time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds or done < 2 * batch:
        start = (i * batch) % (len(images) - batch + 1)
        predictor.predict(images[start : start + batch], pom)
        done += batch
        i += 1
    return done / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=str(REPO / "models/ffn_fib25_google.pt"))
    parser.add_argument("--volume", default=str(REPO / "data/demo.h5:raw"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=15.0, help="timing per measurement")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--memory-formats",
        nargs="+",
        default=["contiguous", "channels_last"],
        choices=["contiguous", "channels_last"],
        help="compared at each batch size, measured alternately (the first is the baseline)",
    )
    args = parser.parse_args()

    loaded = load_checkpoint(args.checkpoint)
    predictors = {
        fmt: FovPredictor(loaded.model, args.device, args.precision, args.threads, fmt)
        for fmt in args.memory_formats
    }
    default = FovPredictor(loaded.model, args.device, args.precision, args.threads)
    arch = loaded.model.arch
    raw = read_volume(args.volume)
    images = random_fovs(
        raw, arch.fov_size_zyx, max(64, 2 * max(args.batch_sizes)), np.random.default_rng(0)
    )
    gflop = arch.flops_per_fov / 1e9
    print(f"model depth {arch.depth}, FOV {arch.fov_size_zyx}, {gflop:.1f} GFLOP per FOV")
    print(
        f"device {default.device}, precision {args.precision}, torch threads "
        f"{torch.get_num_threads()}, default memory format {default.memory_format}"
    )
    base = args.memory_formats[0]
    print(
        f"{'format':>14} {'batch':>5} {'FOV/s':>9} {'s/FOV':>8} {'GFLOP/s':>9} "
        f"{'vs batch 1':>10} {'vs ' + base:>16}"
    )
    fov_per_s: dict[str, dict[str, float]] = {fmt: {} for fmt in args.memory_formats}
    for batch in args.batch_sizes:
        for fmt, predictor in predictors.items():  # alternately: drifts hit every format
            rate = measure(predictor, images, batch, args.seconds)
            fov_per_s[fmt][str(batch)] = round(rate, 4)
            vs_batch1 = rate / fov_per_s[fmt][str(args.batch_sizes[0])]
            vs_base = rate / fov_per_s[base][str(batch)]
            print(
                f"{fmt:>14} {batch:>5} {rate:>9.3f} {1 / rate:>8.3f} {rate * gflop:>9.1f} "
                f"{vs_batch1:>10.2f} {vs_base:>16.2f}"
            )
    print(
        json.dumps(
            {
                "fov_per_s": fov_per_s,
                "gflop_per_fov": round(gflop, 3),
                "device": str(default.device),
                "precision": args.precision,
                "threads": torch.get_num_threads(),
                "default_memory_format": default.memory_format,
            }
        )
    )


if __name__ == "__main__":
    main()
