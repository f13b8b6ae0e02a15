"""Peak memory of a block job vs the volume size (same block shape).

Writes two crops of ``fib25_s1_raw.h5`` (1x and 4x the voxels), and for each runs the
``ffnflow place-seeds`` and ``ffnflow segment`` commands for block ``z0_y0_x0`` in a fresh
process, measuring its peak RSS (``wait4``). The segment job is limited to the block's first
``--max-seeds`` seeds: memory does not depend on how many objects are traced. Last line: JSON.

Usage: python benchmarks/block_memory.py [--block 64 64 64] [--context 16 16 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import yaml

from ffnflow.seeds import read_seeds_csv, write_seeds_csv
from ffnflow.volumes import write_volume

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "fib25_s1_raw.h5"
FFNFLOW = [sys.executable, "-m", "ffnflow.cli"]


def peak_rss_mb(cmd: list[str]) -> float:
    """Run ``cmd``; return its peak resident set size in MiB (fails if the command fails)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise RuntimeError(f"{cmd} failed: {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volume", default=str(SHARED))
    parser.add_argument("--small", type=int, nargs=3, default=[125, 125, 125])
    parser.add_argument("--large", type=int, nargs=3, default=[250, 250, 125])
    parser.add_argument("--block", type=int, nargs=3, default=[64, 64, 64])
    parser.add_argument("--context", type=int, nargs=3, default=[16, 16, 16])
    parser.add_argument("--max-seeds", type=int, default=10)
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as tmp, h5py.File(args.volume, "r") as src:
        tmp = Path(tmp)
        for name, shape in (("small", args.small), ("large", args.large)):
            path = tmp / f"{name}.h5"
            write_volume(f"{path}:raw", src["raw"][tuple(slice(0, s) for s in shape)], (10, 10, 10))
            config = tmp / f"{name}.yaml"
            config.write_text(
                yaml.safe_dump(
                    {
                        "datasets": {name: {"raw": f"{path}:raw", "resolution_nm": [10, 10, 10]}},
                        "blocks": {"shape_zyx": args.block, "context_zyx": args.context},
                        "ffn": {
                            "checkpoint": str(REPO / "models/ffn_fib25_google.pt"),
                            "device": "cpu",
                            "progress": False,
                        },
                    }
                )
            )
            common = ["--config", str(config), "--dataset", name, "--block", "z0_y0_x0"]
            seeds = tmp / f"{name}_seeds.csv"
            rss_seeds = peak_rss_mb(FFNFLOW + ["place-seeds", *common, "--out", str(seeds)])
            write_seeds_csv(seeds, read_seeds_csv(seeds)[: args.max_seeds])
            rss_segment = peak_rss_mb(
                FFNFLOW
                + [
                    "segment",
                    *common,
                    "--seeds",
                    str(seeds),
                    "--out",
                    str(tmp / f"{name}_b.h5"),
                    "--counters",
                    str(tmp / f"{name}_c.json"),
                ]
            )
            results[name] = {
                "volume_zyx": shape,
                "voxels": int(np.prod(shape)),
                "place_seeds_peak_rss_mb": round(rss_seeds, 1),
                "segment_peak_rss_mb": round(rss_segment, 1),
            }
            print(name, json.dumps(results[name]), flush=True)
    s, big = results["small"], results["large"]
    summary = {
        **results,
        "block_zyx": args.block,
        "context_zyx": args.context,
        "voxel_ratio": round(big["voxels"] / s["voxels"], 2),
        "segment_rss_ratio": round(big["segment_peak_rss_mb"] / s["segment_peak_rss_mb"], 3),
        "place_seeds_rss_ratio": round(
            big["place_seeds_peak_rss_mb"] / s["place_seeds_peak_rss_mb"], 3
        ),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
