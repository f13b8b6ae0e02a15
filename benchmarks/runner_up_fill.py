"""Can the FFN's own sub-threshold POM say which cell an unlabelled membrane voxel belongs to?

The FFN leaves the membranes between cells unlabelled; FIB-25's ground truth gives every
membrane voxel to a cell, and those voxels hold much of the VI (on x 0-125 after
agglomeration, VI split 0.576 against 0.328 with them left out). The nearest segment is the
ground truth's side about half the time (``benchmarks/membrane_fill.py``). This benchmark
tries the FFN's signal instead: it flood-fills a crop with the sequential
:class:`~ffnflow.ffn.canvas.Canvas` (fp32, reference options, seeds by ``sobel_peaks``,
image mirrored by the FOV radius at the crop's faces) and records, for every voxel, the
accepted object whose POM reached the highest value there (its *runner-up owner*, when the
voxel stays unlabelled). It then fills the unlabelled voxels with that owner where its POM
is at least p, for several p, and compares with growing every segment by d voxels
(nearest segment). Per fill: VI split / merge, adapted Rand error, labelled fraction, ERL
(kimimaro skeletons of the crop's ground truth; funlib's strict merge rule) and the
fraction of filled voxels whose ground-truth object is the majority object of the segment
they joined (``acc``). Segments below 1000 voxels are dropped first, as the clean-up does.

Usage: python benchmarks/runner_up_fill.py DATA.h5 --z 0 64 [--save OUT.h5]
(DATA.h5 holds ``raw`` and ground-truth ``labels``, z, y, x; FIB-25 10 nm voxels). Use
only the training half (x 0-125) of ``fib25_s2_train.h5``. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cc3d
import fastremap
import h5py
import numpy as np
from scipy.special import logit
from skimage.segmentation import expand_labels

from ffnflow.ffn.canvas import Canvas, InferenceOptions
from ffnflow.ffn.model import load_checkpoint
from ffnflow.ffn.predictor import FovPredictor
from ffnflow.metrics import majority_objects, segmentation_metrics
from ffnflow.run_length import segmentation_run_length, skeletonize
from ffnflow.seeds import sobel_peak_seeds
from ffnflow.stages.segment import pad_volume_border

REPO = Path(__file__).resolve().parents[1]
RESOLUTION_NM = (10.0, 10.0, 10.0)  # FIB-25


class RunnerUpCanvas(Canvas):
    """A :class:`Canvas` that also keeps, per voxel, the highest POM logit of any accepted
    object and that object's id (``best_logit``, ``best_owner``; z, y, x like the canvas)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.best_logit = np.full(self.shape, -np.inf, dtype=np.float32)
        self.best_owner = np.zeros(self.shape, dtype=np.uint32)

    def _commit(self, start, min_pos, max_pos, read_pom) -> int:
        segment_id = super()._commit(start, min_pos, max_pos, read_pom)
        if segment_id:
            half = self.fov_size // 2
            lo = np.maximum(min_pos - half, 0)
            hi = np.minimum(max_pos + half + 1, self.shape)
            sel = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            logits = read_pom(sel)  # NaN where never predicted: never "higher"
            higher = (self.segmentation[sel] <= 0) & (logits > self.best_logit[sel])
            self.best_logit[sel][higher] = logits[higher]
            self.best_owner[sel][higher] = segment_id
        return segment_id


def segment_crop(raw: np.ndarray, checkpoint: Path) -> tuple[np.ndarray, ...]:
    """FFN labels, best logit and best owner over ``raw`` (z, y, x), and FOV counters."""
    loaded = load_checkpoint(checkpoint)
    norm = loaded.normalization
    image = (raw.astype(np.float32) - norm["image_mean"]) / norm["image_stddev"]
    pad = [(int(r), int(r)) for r in np.asarray(loaded.model.arch.fov_size_zyx) // 2]
    padded, movement_mask = pad_volume_border(image, None, pad)
    seeds = [tuple(int(v) + p[0] for v, p in zip(s, pad)) for s in sobel_peak_seeds(image)]
    predictor = FovPredictor(loaded.model, "cpu", "fp32", None)
    canvas = RunnerUpCanvas(padded, predictor, InferenceOptions(), movement_mask=movement_mask)
    result = canvas.segment_all(seeds)
    crop = tuple(slice(p[0], n - p[1]) for p, n in zip(pad, padded.shape))
    return result.labels[crop], canvas.best_logit[crop], canvas.best_owner[crop], result.counters


def evaluate(gt: np.ndarray, seg: np.ndarray, skeletons: dict, filled: np.ndarray | None):
    """Metrics of ``seg`` and, for the voxels ``filled``, how often they joined their cell."""
    m = segmentation_metrics(gt, seg)
    erl = segmentation_run_length(seg, skeletons, RESOLUTION_NM)
    out = {k: round(m[k], 4) for k in ("vi_split", "vi_merge", "arand", "fraction_segmented")}
    out |= {"erl_nm": round(erl.erl_nm, 1), "erl_merges": erl.n_merges}
    if filled is not None and filled.any():
        majority = majority_objects(seg, gt)
        ids = seg[filled]
        objects = np.array([majority.get(int(s), 0) for s in ids], dtype=np.int64)
        out |= {
            "voxels_filled": int(filled.sum()),
            "acc": round(float(np.mean(objects == gt[filled])), 4),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", help="HDF5 file with raw and labels (z, y, x)")
    parser.add_argument("--z", type=int, nargs=2, default=[0, 64], help="z range of the crop")
    parser.add_argument("--checkpoint", default=str(REPO / "models" / "ffn_fib25_google.pt"))
    parser.add_argument(
        "--probabilities", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.4]
    )
    parser.add_argument("--distances", type=float, nargs="+", default=[1, 2, 5])
    parser.add_argument("--save", default=None, help="write labels, best logit, owner here")
    args = parser.parse_args()

    with h5py.File(args.data, "r") as f:
        raw = f["raw"][args.z[0] : args.z[1]]
        gt = f["labels"][args.z[0] : args.z[1]]
    t0 = time.perf_counter()
    labels, best, owner, counters = segment_crop(raw, Path(args.checkpoint))
    seconds = time.perf_counter() - t0
    print(f"crop {raw.shape}: {counters['fov_evaluations']} FOVs in {seconds:.0f} s", flush=True)
    if args.save:
        with h5py.File(args.save, "w") as f:
            f["labels"], f["best_logit"], f["best_owner"] = labels, best, owner

    seg = cc3d.dust(np.ascontiguousarray(labels.astype(np.uint64)), threshold=1000, connectivity=6)
    unlabelled = seg == 0
    present = np.isin(owner, fastremap.unique(seg[seg > 0]))
    skeletons = skeletonize(gt, RESOLUTION_NM)
    rows = {"ffn pass, dust removed": evaluate(gt, seg, skeletons, None)}
    for p in args.probabilities:
        filled = unlabelled & present & (best >= logit(p))
        rows[f"runner-up owner, POM >= {p}"] = evaluate(
            gt, np.where(filled, owner.astype(np.uint64), seg), skeletons, filled
        )
    for d in args.distances:
        grown = expand_labels(seg, d)
        rows[f"nearest segment within {d:g}"] = evaluate(
            gt, grown, skeletons, unlabelled & (grown > 0)
        )
    print(f"{'':34s} VI split VI merge  ARAND labelled ERL nm merges    acc")
    for name, r in rows.items():
        print(
            f"{name:34s} {r['vi_split']:8.3f} {r['vi_merge']:8.3f} {r['arand']:6.3f} "
            f"{r['fraction_segmented']:8.3f} {r['erl_nm']:6.0f} {r['erl_merges']:6d} "
            f"{r.get('acc', float('nan')):6.3f}"
        )
    print(
        json.dumps({"crop_z": args.z, "fov_evaluations": counters["fov_evaluations"], "rows": rows})
    )


if __name__ == "__main__":
    main()
