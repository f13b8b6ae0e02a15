"""FFN inference throughput: the sequential reference schedule vs the batched engine.

On a crop of a real FIB-25 volume, with the shipped FIB-25 model and the reference
inference options, in one process:

(a) the sequential :class:`~ffnflow.ffn.canvas.Canvas`, fp32, batch 1: the reference;
(b) :class:`~ffnflow.ffn.batched.BatchedCanvas` in the fast configuration: bf16 autocast
    (float32 residual stream and logits) and, on CUDA, ``max_objects`` objects per batch.

It prints, per run, FOV evaluations, FOV/s, voxels segmented per second and achieved
TFLOP/s (forward passes run x ``model.arch.flops_per_fov`` / wall time), then the ratio
b/a and how much the two segmentations agree: variation of information (split, merge;
bits) and adapted Rand error of (b) against (a), scikit-image, **label 0 counted as a
label** (unsegmented voxels must agree too; ``arand_agreement``), and also with the
voxels that (a) left unlabelled ignored (``arand_agreement_ignore0``). ``fov_per_s``
counts the forward passes of the kept schedule (what the sequential engine would need);
passes discarded by restarts are in ``fov_per_s_raw``. The last line is one JSON object
with keys ``fov_per_s_sequential``, ``fov_per_s_batched``, ``speedup``, ``tflops``,
``arand_agreement``, ``device`` and more.

The (b) configuration on the CPU is bf16 with one object at a time (batching does not
speed up the CPU); on CUDA bf16 with 16 objects and every model call padded to 16 FOVs.
On the CPU the two runs share the cores with whatever else runs: CPU seconds are
printed next to wall seconds.

Usage::

    python benchmarks/ffn_inference.py --crop 100                       # CPU: bf16, 1 object
    python benchmarks/ffn_inference.py --crop 160 --max-objects 16      # CUDA: bf16 + batching
    python benchmarks/ffn_inference.py --volume ../shared/data/fib25_s1_raw.h5:raw --crop 100 \
        --crop-at centre

Seeds: ``ffnflow.seeds.sobel_peak_seeds`` on the normalised crop.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from ffnflow.ffn.batched import BatchedCanvas
from ffnflow.ffn.canvas import Canvas, InferenceOptions, SegmentationResult
from ffnflow.ffn.model import load_checkpoint
from ffnflow.ffn.predictor import FovPredictor, resolve_device
from ffnflow.metrics import segmentation_metrics
from ffnflow.seeds import sobel_peak_seeds
from ffnflow.volumes import Roi, open_volume

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VOLUME = REPO.parent / "shared" / "data" / "google_ffn_crop.h5"


def crop_roi(shape: tuple[int, ...], crop: list[int] | None, where: str) -> Roi:
    """The ROI of a crop of ``crop`` (one size or z, y, x) at the corner or the centre."""
    if not crop:
        return Roi.from_shape(shape)
    size = np.minimum(np.resize(np.asarray(crop, dtype=np.int64), 3), shape)
    offset = np.zeros(3, dtype=np.int64) if where == "corner" else (np.asarray(shape) - size) // 2
    return Roi(tuple(int(v) for v in offset), tuple(int(v) for v in size))


def warm_up(predictor: FovPredictor, batch: int) -> None:
    """One forward pass of ``batch`` FOVs outside the timing (CUDA context, kernels, compile)."""
    shape = (batch, *predictor.fov_size_zyx)
    predictor.predict(np.zeros(shape, np.float32), np.zeros(shape, np.float32))
    predictor.fov_evaluations = 0


def run(canvas: Canvas | BatchedCanvas, seeds: list) -> tuple[SegmentationResult, float]:
    """Segment all seeds; returns the result and the CPU time this process used (s)."""
    cpu0 = time.process_time()
    result = canvas.segment_all(seeds)
    return result, time.process_time() - cpu0


def summarise(
    name: str, result: SegmentationResult, cpu_s: float, flops_per_fov: float
) -> dict[str, float]:
    """Rates of one run (per second of its wall time)."""
    c = result.counters
    wall = max(c["wall_s"], 1e-9)
    kept = c["fov_evaluations"]
    run = c.get("fov_evaluations_total", kept)
    stats = {
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu_s, 3),
        "fov_evaluations": int(kept),
        "fov_evaluations_run": int(run),
        "fov_per_s": kept / wall,
        "fov_per_s_raw": run / wall,
        "s_per_fov": wall / max(kept, 1),
        "voxels_segmented": int(c["voxels_segmented"]),
        "voxels_per_s": c["voxels_segmented"] / wall,
        "tflops": run * flops_per_fov / wall / 1e12,
        "segments": len(result.origins),
        "seeds_tried": int(c["seeds_tried"]),
    }
    print(
        f"{name:>10}: {stats['fov_evaluations']} FOVs kept ({stats['fov_evaluations_run']} run) in "
        f"{wall:.1f} s (CPU {cpu_s:.1f} s) = {stats['fov_per_s']:.3f} FOV/s "
        f"({stats['s_per_fov']:.3f} s/FOV, raw "
        f"{stats['fov_per_s_raw']:.3f} FOV/s), {stats['voxels_per_s']:.0f} voxels segmented/s, "
        f"{stats['tflops']:.4f} TFLOP/s, {stats['segments']} segments from "
        f"{stats['seeds_tried']} seeds tried",
        flush=True,
    )
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volume", default=f"{DEFAULT_VOLUME}:raw", help="raw volume spec")
    parser.add_argument(
        "--crop", type=int, nargs="+", default=[100], help="crop size: N or z y x (0: whole)"
    )
    parser.add_argument("--crop-at", choices=["corner", "centre"], default="corner")
    parser.add_argument("--checkpoint", default=str(REPO / "models" / "ffn_fib25_google.pt"))
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--precision",
        default="bf16",
        choices=["fp32", "tf32", "bf16", "fp16"],
        help="precision of the batched run (the sequential one is fp32)",
    )
    parser.add_argument(
        "--max-objects",
        type=int,
        default=None,
        help="objects filled at once (default: 1 on the CPU, 16 on CUDA)",
    )
    parser.add_argument(
        "--fixed-batch",
        type=int,
        default=None,
        help="FOVs per model call of the batched run (default: 1 on the CPU, "
        "max-objects on CUDA); 0: as many as pending",
    )
    parser.add_argument(
        "--memory-format", default="auto", choices=["auto", "contiguous", "channels_last"]
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the batched run's model"
    )
    parser.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="let cuDNN time its algorithms (faster, not bit-reproducible)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default: usable cores)"
    )
    parser.add_argument("--skip-sequential", action="store_true", help="run (b) only")
    parser.add_argument(
        "--reference",
        default=None,
        help="optional segmentation spec (same crop) to compare both runs with",
    )
    parser.add_argument("--save", default=None, help="write both segmentations to this .npz")
    args = parser.parse_args()

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    max_objects = args.max_objects or (16 if cuda else 1)
    fixed_batch = args.fixed_batch if args.fixed_batch is not None else (max_objects if cuda else 1)
    fixed_batch = fixed_batch or None

    loaded = load_checkpoint(args.checkpoint)
    arch = loaded.model.arch
    volume = open_volume(args.volume)
    roi = crop_roi(volume.shape, [c for c in args.crop if c > 0], args.crop_at)
    raw = volume.read(roi)
    norm = loaded.normalization
    image = (raw.astype(np.float32) - norm["image_mean"]) / norm["image_stddev"]
    seeds = [tuple(int(v) for v in s) for s in sobel_peak_seeds(image)]
    options = InferenceOptions()  # the reference FIB-25 options
    flops = arch.flops_per_fov
    print(f"volume {args.volume} crop {roi.shape} at {roi.offset}, {len(seeds)} seeds")
    print(f"model depth {arch.depth}, FOV {arch.fov_size_zyx}, {flops / 1e9:.1f} GFLOP per FOV")

    seq = seq_stats = None
    if not args.skip_sequential:
        predictor = FovPredictor(loaded.model, str(device), "fp32", args.threads)
        warm_up(predictor, 1)
        print(
            f"(a) sequential Canvas: device {device}, fp32, batch 1, memory format "
            f"{predictor.memory_format}, torch threads {torch.get_num_threads()}",
            flush=True,
        )
        seq, cpu_s = run(Canvas(image, predictor, options), seeds)
        seq_stats = summarise("sequential", seq, cpu_s, flops)

    predictor = FovPredictor(
        loaded.model,
        str(device),
        args.precision,
        args.threads,
        memory_format=args.memory_format,
        compile=args.compile,
        fixed_batch=fixed_batch,
        deterministic=not args.cudnn_benchmark,
    )
    warm_up(predictor, fixed_batch or max_objects)
    print(
        f"(b) BatchedCanvas: device {device}, {args.precision}, max_objects {max_objects}, "
        f"fixed_batch {fixed_batch}, memory format {predictor.memory_format}, compile "
        f"{args.compile}, torch threads {torch.get_num_threads()}",
        flush=True,
    )
    bat, cpu_s = run(BatchedCanvas(image, predictor, options, max_objects=max_objects), seeds)
    bat_stats = summarise("batched", bat, cpu_s, flops)
    c = bat.counters
    print(
        f"    batched: {int(c['forward_batches'])} forward batches (mean "
        f"{c['fov_evaluations_total'] / max(c['forward_batches'], 1):.2f} FOVs), "
        f"{int(c['objects_restarted'])} restarts, {int(c['objects_cancelled'])} cancelled, "
        f"{int(c['fov_evaluations_discarded'])} FOVs discarded"
    )

    summary = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "volume": args.volume,
        "crop_zyx": list(roi.shape),
        "crop_offset_zyx": list(roi.offset),
        "seeds": len(seeds),
        "precision": args.precision,
        "max_objects": max_objects,
        "fixed_batch": fixed_batch,
        "memory_format": predictor.memory_format,
        "compile": args.compile,
        "cudnn_benchmark": args.cudnn_benchmark,
        "fov_per_s_batched": round(bat_stats["fov_per_s"], 4),
        "fov_per_s_batched_raw": round(bat_stats["fov_per_s_raw"], 4),
        "tflops": round(bat_stats["tflops"], 5),
        "wall_s_batched": bat_stats["wall_s"],
        "cpu_s_batched": bat_stats["cpu_s"],
        "fov_evaluations_batched": bat_stats["fov_evaluations"],
        "fov_evaluations_batched_run": bat_stats["fov_evaluations_run"],
        "voxels_per_s_batched": round(bat_stats["voxels_per_s"], 1),
        "segments_batched": bat_stats["segments"],
        "restarts": int(c["objects_restarted"]),
        "cancelled": int(c["objects_cancelled"]),
        "forward_batches": int(c["forward_batches"]),
    }
    if seq is not None:
        agree = segmentation_metrics(seq.labels, bat.labels, ignore_gt_zero=False)
        agree_fg = segmentation_metrics(seq.labels, bat.labels, ignore_gt_zero=True)
        speedup = bat_stats["fov_per_s"] / seq_stats["fov_per_s"]
        print(
            f"ratio b/a: {speedup:.2f}x FOV/s, "
            f"{seq_stats['wall_s'] / bat_stats['wall_s']:.2f}x wall time, "
            f"{bat_stats['voxels_per_s'] / max(seq_stats['voxels_per_s'], 1e-9):.2f}x voxels/s"
        )
        print(
            f"agreement of (b) with (a) (label 0 counted): VI split {agree['vi_split']:.4f}, "
            f"VI merge {agree['vi_merge']:.4f} bits, adapted Rand error {agree['arand']:.4f}; "
            f"segments {seq_stats['segments']} vs {bat_stats['segments']}, identical voxels "
            f"{np.mean(seq.labels == bat.labels):.5f}"
        )
        print(
            f"  (voxels unlabelled in (a) ignored: adapted Rand error {agree_fg['arand']:.4f}, "
            f"VI split {agree_fg['vi_split']:.4f}, merge {agree_fg['vi_merge']:.4f})"
        )
        summary.update(
            fov_per_s_sequential=round(seq_stats["fov_per_s"], 4),
            speedup=round(speedup, 3),
            wall_speedup=round(seq_stats["wall_s"] / bat_stats["wall_s"], 3),
            arand_agreement=round(agree["arand"], 5),
            arand_agreement_ignore0=round(agree_fg["arand"], 5),
            vi_split_agreement=round(agree["vi_split"], 5),
            vi_merge_agreement=round(agree["vi_merge"], 5),
            identical_voxels=round(float(np.mean(seq.labels == bat.labels)), 6),
            tflops_sequential=round(seq_stats["tflops"], 5),
            wall_s_sequential=seq_stats["wall_s"],
            cpu_s_sequential=seq_stats["cpu_s"],
            fov_evaluations_sequential=seq_stats["fov_evaluations"],
            segments_sequential=seq_stats["segments"],
        )
    else:
        summary.update(fov_per_s_sequential=None, speedup=None, arand_agreement=None)
    if args.reference:
        ref = open_volume(args.reference).read(roi).astype(np.uint64)
        for name, result in (("sequential", seq), ("batched", bat)):
            if result is not None:
                m = segmentation_metrics(ref, result.labels, ignore_gt_zero=False)
                print(
                    f"{name} vs reference {args.reference} (label 0 counted): adapted Rand error "
                    f"{m['arand']:.4f}, VI split {m['vi_split']:.4f}, merge {m['vi_merge']:.4f}"
                )
                summary[f"arand_reference_{name}"] = round(m["arand"], 5)
    if args.save:
        arrays = {"batched": bat.labels} | ({"sequential": seq.labels} if seq is not None else {})
        np.savez_compressed(args.save, **arrays)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
