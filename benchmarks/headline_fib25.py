"""The headline: the whole pipeline on FIB-25's evaluation region vs google/ffn's published run.

Writes the evaluation region of ``fib25_s2_train.h5`` (x 125-250, 160x250x125 voxels,
raw and labels; the source file is only read) as a dataset, runs the real ``snakemake``
CLI on it with ``--cores 2`` (every stage: seeds, FFN, clean-up, resegmentation
agglomeration, publishing with meshes and skeletons, connectome graph, evaluation,
report), timing the whole run, then compares the workflow's per-stage metrics with the
published google/ffn segmentation restricted to the same region, evaluated the same way
(VI split/merge, adapted Rand error with ground-truth 0 ignored, ERL along the same
kimimaro skeletons). Nothing here is tuned on x 125-250: the options are the workflow's
defaults plus the ones given in ``--set`` style below (chosen on x 0-125).

Prints a table and writes it, with the counters (seeds, FOVs per stage, pairs examined),
to ``--out`` (text) and ``--out`` with ``.json``. Last line: one JSON object.

The measured runs used ``ffn.precision: bf16`` on a CPU with bf16 instructions; on a CPU
without them (AVX2 only) bf16 is emulated and 60-80x slower than fp32: use
``--precision fp32`` there. The output's first line names the CPU and its capability.

Usage: python benchmarks/headline_fib25.py [--work /tmp/ffnflow_headline] [--cores 2]
[--precision bf16]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import torch

from ffnflow.ffn.predictor import cpu_runs_natively
from ffnflow.metrics import segmentation_metrics
from ffnflow.run_length import segmentation_run_length, skeletonize

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
EVAL_X = (125, 250)
RESOLUTION_NM = (10.0, 10.0, 10.0)

CONFIG = """\
datasets:
  fib25_eval:
    raw: "{h5}:raw"
    labels: "{h5}:labels"
    resolution_nm: [10, 10, 10]
ffn:
  precision: {precision}
  volume_border: mirror
"""


def write_region(work: Path) -> Path:
    """The evaluation region (raw, labels) as its own HDF5 file under ``work``."""
    out = work / "fib25_s2_eval.h5"
    if out.exists():
        return out
    tmp = out.with_suffix(".tmp.h5")
    with h5py.File(DATA / "fib25_s2_train.h5", "r") as src, h5py.File(tmp, "w") as dst:
        for name in ("raw", "labels"):
            dst.create_dataset(
                name, data=src[name][:, :, EVAL_X[0] : EVAL_X[1]], compression="gzip"
            )
    tmp.rename(out)
    return out


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else the platform's processor."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def rule_seconds(bench_dir: Path) -> dict[str, float]:
    """Wall seconds per rule (summed over blocks) from snakemake's benchmark TSVs."""
    out: dict[str, float] = {}
    for tsv in sorted(bench_dir.rglob("benchmarks/*.tsv")):
        with open(tsv) as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if rows:
            key = tsv.stem
            out[key] = round(out.get(key, 0.0) + float(rows[0]["s"]), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/ffnflow_headline")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/headline_fib25_eval.txt"))
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="do not run snakemake: evaluate the results already in --work (wall time as recorded)",
    )
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    h5 = write_region(work)
    config = work / "headline.yaml"
    config.write_text(CONFIG.format(h5=h5, precision=args.precision))
    name = "fib25_eval"
    targets = [
        f"results/{name}/{f}"
        for f in (
            "segmentation.h5",
            "connectome.graphml",
            "metrics.json",
            "report/overlays.png",
            "report/metrics.html",
        )
    ]
    cmd = [
        str(Path(sys.executable).with_name("snakemake")),
        "--cores",
        str(args.cores),
        "--directory",
        str(work),
        "--configfile",
        str(config),
        "--",
        *targets,
    ]
    wall_file = work / "snakemake_wall_s.txt"
    if args.evaluate_only:
        wall = float(wall_file.read_text())
    else:
        print(" ".join(cmd), flush=True)
        t0 = time.perf_counter()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(work / "snakemake.log", "w") as log:
            proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"snakemake failed ({proc.returncode}); see {work / 'snakemake.log'}")
        wall_file.write_text(f"{wall:.1f}\n")
    results = work / "results" / name
    metrics = json.loads((results / "metrics.json").read_text())

    # The published segmentation on the same region, evaluated the same way.
    with h5py.File(h5, "r") as f:
        labels = f["labels"][:]
    with h5py.File(DATA / "google_ffn_published_s2_train.h5", "r") as f:
        published = f["labels"][:, :, EVAL_X[0] : EVAL_X[1]]
    skeletons = skeletonize(labels, RESOLUTION_NM)
    pub = segmentation_metrics(labels, published)
    pub.update(segmentation_run_length(published, skeletons, RESOLUTION_NM).as_dict())

    counters = {
        "ffn": json.loads((results / "ffn_counters.json").read_text()),
        "agglomeration": json.loads((results / "agglomeration_counters.json").read_text()),
    }
    rows = [*metrics["stages"].items(), ("google published", pub)]
    lines = [
        f"CPU: {cpu_model()}, torch {torch.__version__} capability "
        f"{torch.backends.cpu.get_cpu_capability()}, native {args.precision}: "
        f"{cpu_runs_natively(args.precision)}; ffn.precision {args.precision}",
        f"FIB-25 fib25_s2_train.h5 x {EVAL_X[0]}-{EVAL_X[1]} (160x250x125), whole pipeline, "
        f"snakemake --cores {args.cores}: {wall / 60:.1f} min wall",
        f"{'stage':<18} {'VI split':>8} {'VI merge':>8} {'VI sum':>7} {'ARAND':>6} "
        f"{'ERL nm':>7} {'segments':>8} {'labelled':>8}",
    ]
    for stage, m in rows:
        lines.append(
            f"{stage:<18} {m['vi_split']:8.3f} {m['vi_merge']:8.3f} {m['vi_sum']:7.3f} "
            f"{m['arand']:6.3f} {m.get('erl_nm', float('nan')):7.0f} {m['n_segments']:8d} "
            f"{100 * m['fraction_segmented']:7.1f}%"
        )
    final = metrics["stages"]["final"]
    lines.append(
        f"final vs published: VI sum {final['vi_sum'] - pub['vi_sum']:+.3f} bits, "
        f"ARAND {final['arand'] - pub['arand']:+.3f}"
    )
    ffn_c, agg_c = counters["ffn"].get("counters", counters["ffn"]), counters["agglomeration"]
    lines.append(
        "FFN pass: "
        + ", ".join(
            f"{k} {ffn_c[k]}"
            for k in ("seeds_total", "seeds_accepted", "fov_evaluations")
            if k in ffn_c
        )
    )
    lines.append("agglomeration: " + ", ".join(f"{k} {v}" for k, v in agg_c.items()))
    lines.append("rule wall seconds: " + json.dumps(rule_seconds(results)))
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    summary = {
        "wall_min": round(wall / 60, 2),
        "cpu": lines[0],
        "stages": metrics["stages"],
        "published": pub,
        "counters": counters,
        "rule_wall_s": rule_seconds(results),
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({"wall_min": summary["wall_min"], "final": final, "published": pub}))


if __name__ == "__main__":
    main()
