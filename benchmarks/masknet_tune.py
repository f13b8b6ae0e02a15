"""Choose the mask net thresholds on the training half (x 0-125) of fib25_s2_train.h5.

The held-out half (x 125-250) is for measuring only (benchmarks/masknet_acceptance.py);
thresholds are chosen here, on the data the model was trained on. Prints the boundary
precision/recall for a grid of ``masknet.boundary_threshold``; the two seed figures for a
grid of it with ``masknet.seed_min_distance`` and ``seed_max_local_boundary``
(``seed_min_boundary_distance`` 1, ``seed_local_radius`` 1); and for a grid of ``masknet.exclude_threshold`` and
``masknet.section_exclude_fraction`` the flagged fractions of injected defects and of clean
voxels. It names the chosen settings (rules in the code) and writes every figure to
``--json``.

Usage: python benchmarks/masknet_tune.py [--model models/masknet_fib25.pt] [--threads 2]
       [--json masknet_tune.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

from ffnflow.masknet.defects import DEFECT_KINDS, inject_defects
from ffnflow.masknet.model import load_masknet
from ffnflow.masknet.prediction import (
    predict_roi,
    quantize,
    whole_sections,
)
from ffnflow.masknet.targets import boundary_target
from ffnflow.seeds import masknet_peak_seeds
from ffnflow.volumes import Roi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from masknet_acceptance import FIB25, REPO, precision_recall, seed_quality

TRAIN_X = slice(0, 125)


def predict(loaded, raw: np.ndarray) -> np.ndarray:
    """Quantised probabilities (uint8, (C, z, y, x)) of a crop treated as a volume."""
    prob = predict_roi(
        loaded.model,
        lambda r: raw[r.to_slices()],
        raw.shape,
        Roi.from_shape(raw.shape),
        loaded.normalization,
        (96, 96, 96),
    )
    return quantize(prob)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(REPO / "models" / "masknet_fib25.pt"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default="masknet_tune.json", help="all figures, as JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_masknet(args.model)
    with h5py.File(FIB25, "r") as f:
        raw, labels = f["raw"][:, :, TRAIN_X], f["labels"][:, :, TRAIN_X]
    q = predict(loaded, raw)
    truth = boundary_target(labels)
    result: dict = {"boundary": [], "seeds": [], "exclusion": []}
    for t in (0.3, 0.4, 0.5, 0.6, 0.7):
        level = int(np.ceil(t * 255))
        p, r = precision_recall(q[0] >= level, truth)
        result["boundary"].append({"threshold": t, "precision": p, "recall": r})
        print(json.dumps(result["boundary"][-1]), flush=True)
    rng = np.random.default_rng(99)
    shape = (64, 96, 96)
    crops = []
    for kind in DEFECT_KINDS:
        for _ in range(3):
            start = [int(rng.integers(0, s - c + 1)) for s, c in zip(raw.shape, shape)]
            sel = tuple(slice(a, a + c) for a, c in zip(start, shape))
            d = inject_defects(raw[sel].astype(np.float32), rng, [kind], labels[sel])
            crops.append(
                (
                    kind,
                    d.exclude,
                    predict(loaded, np.clip(np.rint(d.image), 0, 255).astype(np.uint8))[1],
                )
            )

    def flagged(p: np.ndarray, level: int, fraction: float) -> np.ndarray:
        """Exclude map of a crop treated as a volume: threshold, then the section rule."""
        out = p >= level
        out[whole_sections(out.mean(axis=(1, 2)), fraction)] = True
        return out

    for t in (0.2, 0.3, 0.4, 0.5):
        level = int(np.ceil(t * 255))
        for fraction in (0.2, 0.3, 0.5, 1.0):
            flags = [(k, e, flagged(p, level, fraction)) for k, e, p in crops]
            row = {"threshold": t, "section_exclude_fraction": fraction}
            for kind in DEFECT_KINDS:
                sel = [(e, f) for k, e, f in flags if k == kind]
                row[kind] = sum(int((f & e).sum()) for e, f in sel) / sum(
                    int(e.sum()) for e, _ in sel
                )
            row["all_defects"] = sum(int((f & e).sum()) for _, e, f in flags) / sum(
                int(e.sum()) for _, e, _ in flags
            )
            row["clean_in_crops"] = sum(int((f & ~e).sum()) for _, e, f in flags) / sum(
                int((~e).sum()) for _, e, _ in flags
            )
            row["clean_volume"] = float(flagged(q[1], level, fraction).mean())
            result["exclusion"].append(row)
            print(json.dumps(row), flush=True)
    # The exclude settings: the most defect voxels flagged among those that flag <= 1.5 %
    # of clean voxels (a margin under the 2 % bar), in the defect crops and in the whole
    # clean half; ties go to the higher threshold and fraction.
    ok = [r for r in result["exclusion"] if max(r["clean_in_crops"], r["clean_volume"]) <= 0.015]
    if ok:
        result["chosen_exclusion"] = max(
            ok,
            key=lambda r: (
                round(r["all_defects"], 4),
                r["threshold"],
                r["section_exclude_fraction"],
            ),
        )
        print("chosen exclusion:", json.dumps(result["chosen_exclusion"]), flush=True)
    # Seeds avoid what the chosen exclusion settings exclude, as in the workflow.
    chosen = result.get("chosen_exclusion", {"threshold": 0.5, "section_exclude_fraction": 1.0})
    excluded = flagged(
        q[1], int(np.ceil(chosen["threshold"] * 255)), chosen["section_exclude_fraction"]
    )
    for t in (0.3, 0.4, 0.5):
        level = int(np.ceil(t * 255))
        for min_distance in (1, 2, 3):
            for local in (0.03, 0.04, 0.05, 0.08, 1.0):
                seeds = masknet_peak_seeds(
                    q[0] / 255.0,
                    excluded,
                    min_distance=min_distance,
                    threshold=level / 255 - 1e-6,
                    min_boundary_distance=1.0,
                    max_local_boundary=local,
                    local_radius=1,
                )
                row = {
                    "threshold": t,
                    "min_distance": min_distance,
                    "min_boundary_distance": 1.0,
                    "local_radius": 1,
                    "max_local_boundary": local,
                    **seed_quality(seeds, labels),
                }
                result["seeds"].append(row)
                print(json.dumps(row), flush=True)
    # The seed settings: the most seeds inside objects among those that seed >= 97 % of
    # the objects (a margin over the 95 % bar).
    covering = [r for r in result["seeds"] if r["fraction_objects_seeded"] >= 0.97]
    if covering:
        result["chosen_seeds"] = max(covering, key=lambda r: r["fraction_seeds_inside_3vox"])
        print("chosen seeds:", json.dumps(result["chosen_seeds"]), flush=True)
    with open(args.json, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
