"""Block-wise vs whole-volume FFN segmentation of the same FIB-25 crop.

Runs the workflow's stages (seeds -> segment -> stitch) in-process twice on a crop of
``fib25_s2_train.h5``: once as a single block, once split into blocks, and prints VI and
adapted Rand error of both against the ground truth, their difference, the fraction of
voxels labelled, FOV evaluations and wall time. Last line: one JSON object.

Usage: python benchmarks/blockwise_vs_whole.py [--crop 100 150 150] [--blocks 50 75 75]
       [--context 24 24 24] [--precision fp32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py

from ffnflow.config import validate_config
from ffnflow.metrics import segmentation_metrics
from ffnflow.stages.common import block_grid
from ffnflow.stages.seeds import run_gather_seeds, run_place_seeds
from ffnflow.stages.segment import run_segment
from ffnflow.stages.stitch import run_stitch
from ffnflow.volumes import read_volume, write_volume

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "fib25_s2_train.h5"


def run_pipeline(config: dict, work: Path, threads: int) -> dict:
    """seeds -> segment -> stitch for dataset ``d``; returns counters and wall time."""
    t0 = time.perf_counter()
    grid = block_grid(config, read_volume(config["datasets"]["d"]["raw"]).shape)
    files, seed_files = {}, []
    for block in grid:
        seeds = work / block.id / "seeds.csv"
        run_place_seeds(config, "d", block.id, seeds)
        seed_files.append(seeds)
        files[block.id] = work / block.id / "ffn.h5"
        run_segment(
            config, "d", block.id, seeds, files[block.id], work / block.id / "c.json", threads
        )
    run_gather_seeds(seed_files, work / "seeds.csv")
    counters = run_stitch(
        config, "d", files, work / "ffn.h5", work / "c.json", work / "m.json", work / "seeds.csv"
    )
    counters["wall_s_total"] = time.perf_counter() - t0
    return counters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volume", default=str(SHARED))
    parser.add_argument("--crop", type=int, nargs=3, default=[100, 150, 150])
    parser.add_argument("--offset", type=int, nargs=3, default=[0, 0, 0])
    parser.add_argument("--blocks", type=int, nargs=3, default=[50, 75, 75])
    parser.add_argument("--context", type=int, nargs=3, default=[24, 24, 24])
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    sel = tuple(slice(o, o + c) for o, c in zip(args.offset, args.crop))
    with h5py.File(args.volume, "r") as f:
        raw, labels = f["raw"][sel], f["labels"][sel]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_volume(f"{tmp}/crop.h5:raw", raw, (10, 10, 10))
        for name, shape in (("whole", [max(args.crop)] * 3), ("blocks", args.blocks)):
            config = validate_config(
                {
                    "datasets": {"d": {"raw": f"{tmp}/crop.h5:raw", "resolution_nm": [10, 10, 10]}},
                    "blocks": {"shape_zyx": shape, "context_zyx": args.context},
                    "ffn": {
                        "checkpoint": str(REPO / "models/ffn_fib25_google.pt"),
                        "device": "cpu",
                        "precision": args.precision,
                        "progress": False,
                    },
                }
            )
            counters = run_pipeline(config, tmp / name, args.threads)
            seg = read_volume(f"{tmp}/{name}/ffn.h5:labels")
            metrics = segmentation_metrics(labels, seg)
            results[name] = {
                **metrics,
                "fov_evaluations": counters["fov_evaluations"],
                "blocks": counters["blocks"],
                "stitch_merges": counters["stitch_merges"],
                "wall_s": round(counters["wall_s_total"], 1),
            }
            print(name, json.dumps(results[name]), flush=True)
    w, b = results["whole"], results["blocks"]
    summary = {
        "crop_zyx": args.crop,
        "blocks_zyx": args.blocks,
        "context_zyx": args.context,
        "whole": w,
        "blocks": b,
        "delta_vi_sum": round(b["vi_sum"] - w["vi_sum"], 4),
        "delta_arand": round(b["arand"] - w["arand"], 4),
        "delta_fraction_segmented": round(b["fraction_segmented"] - w["fraction_segmented"], 4),
        "fov_ratio": round(b["fov_evaluations"] / max(w["fov_evaluations"], 1), 2),
    }
    print(
        f"VI sum whole {w['vi_sum']:.3f} blocks {b['vi_sum']:.3f} (delta {summary['delta_vi_sum']:+.3f} bits); "
        f"labelled {w['fraction_segmented']:.3f} vs {b['fraction_segmented']:.3f}"
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
