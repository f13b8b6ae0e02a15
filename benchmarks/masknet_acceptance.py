"""Acceptance of the mask net (issue 4), measured on x 125-250 of fib25_s2_train.h5 only.

The mask net never saw this half (it trains on x 0-125). Every crop below is treated as a
volume of its own (mirrored at its faces), as the workflow treats a dataset.

- ``boundary``: precision and recall of predicted boundary voxels (probability >= 0.5)
  against the ground-truth boundary (label interfaces, label 0 excluded, dilated by one
  voxel), each with a 1-voxel (6-connected) tolerance; the same for the Sobel edge map of
  the reference seed policy (``ffnflow.seeds.sobel_edges``). Whole held-out half.
- ``seeds``: for the ``masknet_peaks`` and ``sobel_peaks`` policies on the held-out half,
  the fraction of seeds inside a ground-truth object at >= 3 voxels from its boundary
  (Euclidean distance to the nearest voxel of another label; the crop faces do not count),
  and the fraction of objects of >= 2000 voxels (within the half) that hold a seed.
- ``exclusion``: crops of the held-out half with injected defects, 3 per kind (fixed
  random generator): fraction of defect voxels flagged (exclude >= masknet.exclude_threshold)
  and of the other voxels of those crops; plus the flagged fraction of the clean half.
- ``e2e``: FFN (models/ffn_fib25_google.pt, reference options, fp32) on a 60x120x120
  crop, with mask net, ``masknet_peaks`` seeds and the movement mask, clean and with one
  blank section; VI against ground truth with the section's voxels ignored, and how many
  voxels of the section were labelled. ``--e2e-baseline`` adds the blank crop without the
  mask net (Sobel seeds, no mask, no fill) for contrast.

Usage: python benchmarks/masknet_acceptance.py [--parts boundary seeds exclusion e2e]
       [--model models/masknet_fib25.pt] [--threads 2] [--e2e-baseline]
Last line: one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import edt
import h5py
import numpy as np
import torch
from scipy import ndimage

from ffnflow.config import dataset_config, validate_config
from ffnflow.ffn.canvas import Canvas, InferenceOptions
from ffnflow.ffn.model import load_checkpoint
from ffnflow.ffn.predictor import FovPredictor
from ffnflow.masknet.defects import DEFECT_KINDS, inject_defects
from ffnflow.masknet.targets import FACES, boundary_target
from ffnflow.metrics import segmentation_metrics
from ffnflow.seeds import read_seeds_csv, sobel_edges
from ffnflow.stages.common import ffn_inputs, normalize_image, probability_level
from ffnflow.stages.mask import run_gather_mask, run_predict_mask
from ffnflow.stages.seeds import run_place_seeds
from ffnflow.volumes import write_volume

REPO = Path(__file__).resolve().parents[1]
FIB25 = REPO.parent / "shared" / "data" / "fib25_s2_train.h5"
HELD_OUT_X = slice(125, 250)
E2E_CROP = (slice(50, 110), slice(65, 185), slice(130, 250))  # global z, y, x of fib25
BLANK_Z = 27  # local section of the e2e crop made blank


def precision_recall(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Precision and recall of boolean maps with a 1-voxel (6-connected) tolerance."""
    near_truth = ndimage.binary_dilation(truth, FACES)
    near_pred = ndimage.binary_dilation(pred, FACES)
    return float((pred & near_truth).sum() / max(pred.sum(), 1)), float(
        (truth & near_pred).sum() / max(truth.sum(), 1)
    )


class Workspace:
    """Crops written as datasets of a temporary config, run through the stage functions."""

    def __init__(self, root: Path, model: str, threads: int) -> None:
        self.root, self.model, self.threads = root, model, threads

    def config(self, name: str, raw: np.ndarray, labels: np.ndarray | None, policy: str) -> dict:
        path = self.root / f"{name}.h5"
        write_volume(f"{path}:raw", raw, (10, 10, 10))
        entry = {"raw": f"{path}:raw", "resolution_nm": [10, 10, 10]}
        if labels is not None:
            write_volume(f"{path}:labels", labels, (10, 10, 10), "segmentation")
            entry["labels"] = f"{path}:labels"
        return validate_config(
            {
                "datasets": {name: entry},
                "blocks": {"shape_zyx": [256, 256, 256], "context_zyx": [24, 24, 24]},
                "seeds": {"policy": policy},
                "masknet": {"enabled": True, "checkpoint": self.model, "device": "cpu"},
            }
        )

    def predict(self, config: dict, name: str) -> Path:
        block = self.root / name / "block_mask.h5"
        run_predict_mask(config, name, "z0_y0_x0", block, threads=self.threads)
        out = self.root / name / "mask.h5"
        run_gather_mask(config, name, {"z0_y0_x0": block}, out)
        return out

    def seeds(self, config: dict, name: str, mask_h5: Path | None) -> np.ndarray:
        out = self.root / name / f"seeds_{config['seeds']['policy']}.csv"
        run_place_seeds(config, name, "z0_y0_x0", out, mask_h5)
        return read_seeds_csv(out)


def read_mask(mask_h5: Path) -> dict[str, np.ndarray]:
    with h5py.File(mask_h5, "r") as f:
        return {k: f[k][...] for k in ("boundary", "exclude")}


def seed_quality(seeds: np.ndarray, labels: np.ndarray, min_size: int = 2000) -> dict:
    dist = edt.edt(labels, black_border=False)
    at = tuple(seeds.T)
    good = (labels[at] > 0) & (dist[at] >= 3)
    ids, sizes = np.unique(labels[labels > 0], return_counts=True)
    big = set(ids[sizes >= min_size].tolist())
    seeded = set(labels[at].tolist()) & big
    return {
        "seeds": len(seeds),
        "fraction_seeds_inside_3vox": float(good.mean()) if len(seeds) else 0.0,
        "objects_ge_2000": len(big),
        "fraction_objects_seeded": len(seeded) / max(len(big), 1),
    }


def part_boundary_and_seeds(ws: Workspace, raw: np.ndarray, labels: np.ndarray, parts) -> dict:
    out: dict = {}
    config = ws.config("heldout", raw, labels, "masknet_peaks")
    t0 = time.perf_counter()
    mask_h5 = ws.predict(config, "heldout")
    out["predict_s"] = round(time.perf_counter() - t0, 1)
    mask = read_mask(mask_h5)
    level = probability_level(config["masknet"]["exclude_threshold"])
    out["clean_fraction_flagged_exclude"] = float((mask["exclude"] >= level).mean())
    if "boundary" in parts:
        truth = boundary_target(labels)
        pred = mask["boundary"] >= probability_level(config["masknet"]["boundary_threshold"])
        sobel = sobel_edges(normalize_image(raw, dataset_config(config, "heldout")))
        p, r = precision_recall(pred, truth)
        ps, rs = precision_recall(sobel, truth)
        out["boundary"] = {
            "masknet": {"precision": p, "recall": r},
            "sobel": {"precision": ps, "recall": rs},
            "gt_boundary_fraction": float(truth.mean()),
        }
    if "seeds" in parts:
        out["seeds"] = {"masknet_peaks": seed_quality(ws.seeds(config, "heldout", mask_h5), labels)}
        config["seeds"]["policy"] = "sobel_peaks"
        config["masknet"]["enabled"] = False  # the reference policy alone
        out["seeds"]["sobel_peaks"] = seed_quality(ws.seeds(config, "heldout", None), labels)
    return out


def part_exclusion(ws: Workspace, raw: np.ndarray, labels: np.ndarray, per_kind: int = 3) -> dict:
    rng = np.random.default_rng(2024)
    shape = (64, 96, 96)
    results, flagged_all, defect_all, clean_flagged, clean_all = {}, 0, 0, 0, 0
    for kind in DEFECT_KINDS:
        hit = total = fp = clean = 0
        for i in range(per_kind):
            start = [int(rng.integers(0, s - c + 1)) for s, c in zip(raw.shape, shape)]
            sel = tuple(slice(a, a + c) for a, c in zip(start, shape))
            d = inject_defects(raw[sel].astype(np.float32), rng, [kind], labels[sel])
            name = f"defect_{kind}_{i}"
            config = ws.config(
                name, np.clip(np.rint(d.image), 0, 255).astype(np.uint8), None, "masknet_peaks"
            )
            flagged = read_mask(ws.predict(config, name))["exclude"] >= probability_level(
                config["masknet"]["exclude_threshold"]
            )
            hit += int((flagged & d.exclude).sum())
            total += int(d.exclude.sum())
            fp += int((flagged & ~d.exclude).sum())
            clean += int((~d.exclude).sum())
        results[kind] = {
            "defect_voxels_flagged": hit / max(total, 1),
            "clean_voxels_flagged": fp / max(clean, 1),
            "defect_voxels": total,
        }
        flagged_all, defect_all = flagged_all + hit, defect_all + total
        clean_flagged, clean_all = clean_flagged + fp, clean_all + clean
    return {
        "per_kind": results,
        "defect_voxels_flagged": flagged_all / defect_all,
        "clean_voxels_flagged": clean_flagged / clean_all,
        "crops_per_kind": per_kind,
        "crop_shape": list(shape),
    }


def run_ffn(
    ws: Workspace, config: dict, name: str, mask_h5: Path | None
) -> tuple[np.ndarray, dict]:
    dataset = dataset_config(config, name)
    image, movement_mask = ffn_inputs(config, dataset, None, mask_h5)
    seeds = ws.seeds(config, name, mask_h5)
    loaded = load_checkpoint(REPO / "models" / "ffn_fib25_google.pt")
    predictor = FovPredictor(loaded.model, "cpu", "fp32", ws.threads)
    canvas = Canvas(image, predictor, InferenceOptions(), movement_mask=movement_mask)
    result = canvas.segment_all(map(tuple, seeds))
    return result.labels, {
        k: result.counters[k]
        for k in ("seeds_total", "seeds_accepted", "fov_evaluations", "wall_s")
    }


def part_e2e(ws: Workspace, raw_full: np.ndarray, labels_full: np.ndarray, baseline: bool) -> dict:
    raw, labels = raw_full[E2E_CROP], labels_full[E2E_CROP]
    blank = raw.copy()
    blank[BLANK_Z] = np.clip(
        np.random.default_rng(7).normal(150, 2, blank[BLANK_Z].shape), 0, 255
    ).astype(np.uint8)
    ignored = labels.copy()
    ignored[BLANK_Z] = 0  # the section's voxels are ignored by the metrics
    out: dict = {
        "crop_zyx": [[s.start, s.stop] for s in E2E_CROP],
        "blank_section_z_local": BLANK_Z,
    }
    runs = [("clean", raw, "masknet_peaks", True), ("blank", blank, "masknet_peaks", True)]
    if baseline:
        runs.append(("blank_without_masknet", blank, "sobel_peaks", False))
    for name, image, policy, masked in runs:
        config = ws.config(f"e2e_{name}", image, labels, policy)
        config["masknet"]["enabled"] = masked
        mask_h5 = ws.predict(config, f"e2e_{name}") if masked else None
        seg, counters = run_ffn(ws, config, f"e2e_{name}", mask_h5)
        entry = {
            "metrics_section_ignored": segmentation_metrics(ignored, seg),
            "metrics_all_voxels": segmentation_metrics(labels, seg),
            "section_voxels_labelled": int(np.count_nonzero(seg[BLANK_Z])),
            "counters": counters,
        }
        if masked:
            excl = read_mask(mask_h5)["exclude"] >= probability_level(
                config["masknet"]["exclude_threshold"]
            )
            entry["section_fraction_excluded"] = float(excl[BLANK_Z].mean())
            entry["other_sections_fraction_excluded"] = float(
                np.delete(excl, BLANK_Z, axis=0).mean()
            )
            # Objects carried across: segments with voxels both just above and just below the section.
            above, below = (
                set(np.unique(seg[BLANK_Z - 1])) - {0},
                set(np.unique(seg[BLANK_Z + 1])) - {0},
            )
            entry["segments_on_both_sides"] = len(above & below)
            entry["segments_touching_section"] = len(above | below)
        out[name] = entry
    out["vi_sum_difference_blank_minus_clean"] = (
        out["blank"]["metrics_section_ignored"]["vi_sum"]
        - out["clean"]["metrics_section_ignored"]["vi_sum"]
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", default=["boundary", "seeds", "exclusion", "e2e"])
    parser.add_argument("--model", default=str(REPO / "models" / "masknet_fib25.pt"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--e2e-baseline", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with h5py.File(FIB25, "r") as f:
        raw_full, labels_full = f["raw"][...], f["labels"][...]
    raw, labels = raw_full[:, :, HELD_OUT_X], labels_full[:, :, HELD_OUT_X]
    result: dict = {"model": args.model, "held_out_x": [125, 250]}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp), args.model, args.threads)
        if {"boundary", "seeds"} & set(args.parts):
            result.update(part_boundary_and_seeds(ws, raw, labels, args.parts))
        if "exclusion" in args.parts:
            result["exclusion"] = part_exclusion(ws, raw, labels)
        if "e2e" in args.parts:
            result["e2e"] = part_e2e(ws, raw_full, labels_full, args.e2e_baseline)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
