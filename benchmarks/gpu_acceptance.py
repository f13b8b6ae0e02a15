"""GPU acceptance: parity, inference throughput and training speed of ffnflow's FFN on one GPU.

One script for a short lease of an H100/H200 (``benchmarks/gpu_acceptance.sh`` runs it
there); it runs on the CPU too (``--quick``: tiny crops and models, to test the script).
Sections, each guarded by a time budget, each adding to ``OUT/gpu_acceptance.json``
(rewritten after every section, so a killed run keeps what finished) and logging to
``OUT/gpu_acceptance.log``:

``env``        device, driver, torch/CUDA/cuDNN versions, date.
``parity``     fp32 sequential inference on ``google_ffn_crop.h5`` with the published
               weights vs ``google_seg`` (ARAND, label 0 counted), and the batched
               engine (fp32, then bf16) vs that fp32 result.
``forward``    the model alone on the device: FOV/s and TFLOP/s per precision and batch.
``throughput`` on the 160x250x250 and 250^3 FIB-25 volumes: (a) the reference schedule,
               one object, batch 1, fp32, timed over its first ``--seq-seconds``; (b) the
               batched bf16 engine (z-split convolutions, compiled) over the whole
               volume as a ``--grid`` of blocks (with ``--context``) filled in
               ``--fill-workers`` processes whose FOVs share forward passes
               (``segment_canvases_in_workers``), in model calls of ``--b-batch``
               FOVs with ``--in-flight`` calls at a time. FOV/s over the whole run and
               in steady state (10-90 % of the FOVs), TFLOP/s (50 GFLOP per FOV x
               forward passes run), mean batch, the share of the run the device spent
               in model calls (CUDA events), peak GPU memory.
``training``   training throughput (FOV/s, forward + backward) of the FIB-25 architecture
               in bf16 for a few batch sizes.
``finetune``   fine-tunes the published weights on x 0-125 of ``fib25_s2_train.h5`` for
               ``--finetune-minutes``, saves ``OUT/ffn_finetuned.pt`` (to be evaluated on
               the CPU on x 125-250), and gives a quick GPU evaluation on x 125-250
               against the published weights.

Usage: python benchmarks/gpu_acceptance.py OUT [--data DIR] [--sections a,b,...] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import logging
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ffnflow.ffn.batched import BatchedCanvas  # noqa: E402
from ffnflow.ffn.canvas import Canvas, InferenceOptions  # noqa: E402
from ffnflow.ffn.model import ModelArch, load_checkpoint  # noqa: E402
from ffnflow.ffn.predictor import FovPredictor, batch_bucket, triton_available  # noqa: E402
from ffnflow.ffn.workers import segment_canvases_in_workers  # noqa: E402
from ffnflow.metrics import segmentation_metrics  # noqa: E402
from ffnflow.seeds import sobel_peak_seeds  # noqa: E402

SECTIONS = ("env", "training", "finetune", "forward", "throughput", "parity")
CHECKPOINT = REPO / "models" / "ffn_fib25_google.pt"
log = logging.getLogger("gpu_acceptance")
T_START = time.perf_counter()


# -- helpers ---------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def normalise(raw: np.ndarray, loaded) -> np.ndarray:
    n = loaded.normalization
    return (raw.astype(np.float32) - n["image_mean"]) / n["image_stddev"]


def seeds_of(image: np.ndarray) -> list[tuple[int, int, int]]:
    return [tuple(int(v) for v in s) for s in sobel_peak_seeds(image)]


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """b against a, label 0 counted as a label."""
    m = segmentation_metrics(a, b, ignore_gt_zero=False)
    return {
        "arand": round(m["arand"], 5),
        "vi_split": round(m["vi_split"], 5),
        "vi_merge": round(m["vi_merge"], 5),
        "identical_voxels": round(float(np.mean(a == b)), 6),
    }


def predictor(
    loaded, device, precision, max_objects=1, benchmark=False, conv="auto", residual="fp32"
) -> FovPredictor:
    """A predictor as the workflow builds one: batches padded to ``max_objects`` FOVs."""
    return FovPredictor(
        loaded.model,
        str(device),
        precision,
        fixed_batch=max_objects,
        deterministic=not benchmark,
        conv=conv,
        residual=residual,
    )


def warm(pred: FovPredictor, n: int) -> None:
    shape = (n, *pred.fov_size_zyx)
    pred.predict(np.zeros(shape, np.float32), np.zeros(shape, np.float32))
    pred.fov_evaluations = 0


class TimedPredictor:
    """A predictor's ``submit``/``predict_into`` with the start, landing and size of every
    call (a call's landing is when the engine first saw it done)."""

    def __init__(self, pred: FovPredictor) -> None:
        self.pred = pred
        self.fov_size_zyx = pred.fov_size_zyx
        self.deltas_zyx = pred.deltas_zyx
        self.fixed_batch = pred.fixed_batch
        self.calls: list[tuple[float, float, int]] = []

    def pin_host_memory(self, array) -> bool:
        return self.pred.pin_host_memory(array)

    def unpin_host_memory(self, array) -> None:
        self.pred.unpin_host_memory(array)

    def predict_into(self, parts) -> None:
        self.submit(parts).wait()

    def submit(self, parts):
        t0 = time.perf_counter()
        call = self.pred.submit(parts)
        n = sum(int(i.shape[0]) for i, _ in parts)
        calls = self.calls

        class Timed:
            landed = False

            def _mark(self) -> None:
                if not self.landed:
                    self.landed = True
                    calls.append((t0, time.perf_counter(), n))

            def done(self) -> bool:
                if call.done():
                    self._mark()
                    return True
                return False

            def wait(self) -> None:
                call.wait()
                self._mark()

        return Timed()

    def steady_rate(self, t_start: float) -> dict[str, float]:
        """FOV/s between the ends of the calls that reached 10 % and 90 % of all FOVs
        (the engine's rate without its start and its tail of a few long fills)."""
        ends = np.array([e for _, e, _ in self.calls]) - t_start
        done = np.cumsum([n for _, _, n in self.calls])
        if len(done) < 3:
            return {"fov_per_s": 0.0, "window_s": 0.0}
        i10 = int(np.searchsorted(done, 0.1 * done[-1]))
        i90 = int(np.searchsorted(done, 0.9 * done[-1]))
        window = max(float(ends[i90] - ends[i10]), 1e-9)
        return {
            "fov_per_s": round(float(done[i90] - done[i10]) / window, 1),
            "window_s": round(window, 2),
        }


def run_stats(result, flops: float, max_objects: int | None = None) -> dict[str, Any]:
    c = result.counters
    wall = max(float(c["wall_s"]), 1e-9)
    run = int(c.get("fov_evaluations_total", c["fov_evaluations"]))
    out = {
        "wall_s": round(wall, 3),
        "fov_evaluations": int(c["fov_evaluations"]),
        "fov_evaluations_run": run,
        "fov_per_s": round(c["fov_evaluations"] / wall, 2),
        "fov_per_s_run": round(run / wall, 2),
        "tflops": round(run * flops / wall / 1e12, 3),
        "voxels_per_s": round(float(c["voxels_segmented"]) / wall, 1),
        "segments": len(result.origins),
    }
    if max_objects:
        batches = max(int(c["forward_batches"]), 1)
        out["forward_batches"] = batches
        out["mean_batch"] = round(run / batches, 2)
        out["batch_occupancy"] = round(run / batches / max_objects, 3)
        out["restarts"] = int(c["objects_restarted"])
        out["cancelled"] = int(c["objects_cancelled"])
    return out


def sequential_for(canvas: Canvas, seeds, seconds: float) -> dict[str, Any]:
    """The reference schedule over the first seeds until ``seconds`` have passed."""
    t0 = time.perf_counter()
    done = 0
    for pos in seeds:
        canvas.try_seed(pos)
        done += 1
        if time.perf_counter() - t0 > seconds:
            break
    wall = time.perf_counter() - t0
    fovs = int(canvas.counters["fov_evaluations"])
    return {
        "wall_s": round(wall, 2),
        "seeds_done": done,
        "seeds_total": len(seeds),
        "fov_evaluations": fovs,
        "fov_per_s": round(fovs / wall, 2),
        "voxels_per_s": round(float(canvas.counters["voxels_segmented"]) / wall, 1),
    }


# -- sections --------------------------------------------------------------------------------
def section_env(args, device, results) -> None:
    info: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": str(device),
        "cpu_count": os.cpu_count(),
    }
    if triton_available():
        import triton

        info["triton"] = triton.__version__
        if args.b_conv == "triton" or args.triton_launch:
            from ffnflow.ffn.triton_conv import LAUNCH

            info["triton_launch"] = str(LAUNCH)
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(
            gpu=p.name,
            gpu_memory_gib=round(p.total_memory / 2**30, 1),
            multiprocessors=p.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20,
            ).stdout.strip()  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            info["driver"] = f"nvidia-smi failed: {exc}"
    results["env"] = info


def section_parity(args, device, results) -> None:
    loaded = load_checkpoint(CHECKPOINT)
    flops = loaded.model.arch.flops_per_fov
    with h5py.File(Path(args.data) / "google_ffn_crop.h5", "r") as f:
        raw, google = f["raw"][:], f["google_seg"][:]
    if args.quick:
        raw, google = raw[:60, :60, :60], google[:60, :60, :60]
    image = normalise(raw, loaded)
    seeds = seeds_of(image)
    options = InferenceOptions()
    out: dict[str, Any] = {"crop_zyx": list(raw.shape), "seeds": len(seeds)}

    pred = predictor(loaded, device, "fp32")
    warm(pred, 1)
    fp32 = Canvas(image, pred, options).segment_all(seeds)
    out["fp32_sequential"] = run_stats(fp32, flops) | {
        "vs_google_seg": agreement(google, fp32.labels)
    }
    log.info("parity fp32 sequential vs google_seg: %s", out["fp32_sequential"])
    variants = {
        "fp32_batched": ("fp32", "auto"),
        "bf16_batched": ("bf16", "auto"),
        "fp16_batched": ("fp16", "auto"),
        "bf16_batched_conv3d": ("bf16", "conv3d"),
        "bf16_batched_triton": ("bf16", "triton"),
        "fp16_batched_triton": ("fp16", "triton"),
        "fp16_batched_res16": ("fp16", "zsplit", "low"),
    }
    for name in args.parity_variants:
        precision, conv, *residual = variants[name]
        mo = args.parity_objects
        pred = predictor(
            loaded, device, precision, mo, conv=conv, residual=(residual or ["fp32"])[0]
        )
        warm(pred, mo)
        res = BatchedCanvas(image, pred, options, max_objects=mo).segment_all(seeds)
        out[name] = run_stats(res, flops, mo) | {
            "max_objects": mo,
            "conv": pred.conv,
            "residual": pred.residual,
            "compiled": pred.compiled,
            "vs_fp32_sequential": agreement(fp32.labels, res.labels),
            "vs_google_seg": agreement(google, res.labels),
        }
        log.info("parity %s: %s", name, out[name])
    results["parity"] = out


def section_forward(args, device, results) -> None:
    """The model alone: N forward passes of a batch already on the device."""
    loaded = load_checkpoint(CHECKPOINT)
    arch = loaded.model.arch
    flops = arch.flops_per_fov
    out = []
    b = args.forward_batches
    configs = [("fp32", b[0], False, "conv3d"), ("tf32", b[1], True, "conv3d")]
    configs += [("bf16", n, True, "conv3d") for n in b]
    configs += [("bf16", n, True, "zsplit") for n in b]
    if device.type == "cuda" and triton_available():
        configs += [("bf16", n, True, "triton") for n in b]
    pred_zsplit = None
    for precision, batch, bench, conv in configs:
        if conv == "zsplit":  # one compiled predictor for every batch size
            pred_zsplit = pred_zsplit or FovPredictor(
                loaded.model, str(device), precision, deterministic=False, conv="zsplit"
            )
            pred = pred_zsplit
        else:
            pred = FovPredictor(
                loaded.model, str(device), precision, deterministic=not bench, conv=conv
            )
        gen = torch.Generator(device="cpu").manual_seed(batch)
        x = torch.randn((batch, 2, *arch.fov_size_zyx), generator=gen).to(device)
        x = x.contiguous(memory_format=pred._torch_format)
        with torch.inference_mode(), pred._cudnn_flags():
            for _ in range(3):
                pred._forward(x[:, 0:1], x[:, 1:2])
            sync(device)
            reps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.forward_seconds or reps < 2:
                pred._forward(x[:, 0:1], x[:, 1:2])
                reps += 1
                if reps % 4 == 0:
                    sync(device)
            sync(device)
            wall = time.perf_counter() - t0
        row = {
            "precision": precision,
            "batch": batch,
            "conv": pred.conv,
            "compiled": pred.compiled,
            "cudnn_benchmark": bench,
            "fov_per_s": round(reps * batch / wall, 1),
            "tflops": round(reps * batch * flops / wall / 1e12, 2),
            "ms_per_call": round(1000 * wall / reps, 3),
        }
        out.append(row)
        log.info("forward %s", row)
    results["forward"] = out


def block_slices(shape, grid, context: int) -> list[tuple[slice, slice, slice]]:
    """Read ROIs of a ``grid`` of blocks over ``shape`` (z, y, x), ``context`` voxels wider."""
    shape = np.asarray(shape)
    out = []
    for idx in itertools.product(*(range(g) for g in grid)):
        lo = np.asarray(idx) * shape // grid
        hi = (np.asarray(idx) + 1) * shape // grid
        lo, hi = np.maximum(lo - context, 0), np.minimum(hi + context, shape)
        out.append(tuple(slice(int(i), int(j)) for i, j in zip(lo, hi)))
    return out


def section_throughput(args, device, results) -> None:
    loaded = load_checkpoint(CHECKPOINT)
    flops = loaded.model.arch.flops_per_fov
    volumes = {
        "fib25_s2_160x250x250": "fib25_s2_train.h5",
        "fib25_s1_250x250x250": "fib25_s1_raw.h5",
    }
    for name, filename in volumes.items():
        if args.volumes and not any(v in name for v in args.volumes):
            continue
        if args.deadline_s and time.perf_counter() - T_START > args.deadline_s:
            log.info("throughput: %s skipped (deadline)", name)
            continue
        with h5py.File(Path(args.data) / filename, "r") as f:
            raw = f["raw"][:]
        if args.quick:  # a few FOVs of the full model: seconds on 2 CPU cores
            raw = raw[:40, :48, :48]
        image = normalise(raw, loaded)
        entry: dict[str, Any] = {"shape_zyx": list(raw.shape)}
        results.setdefault("throughput", {})[name] = entry

        # (a) the reference schedule over the whole volume's seeds, timed over its start.
        t0 = time.perf_counter()
        seeds = seeds_of(image)
        entry["seeds"], entry["seeding_s"] = len(seeds), round(time.perf_counter() - t0, 2)
        pred = predictor(loaded, device, "fp32")
        warm(pred, 1)
        reset_peak(device)
        entry["a_sequential_fp32"] = sequential_for(
            Canvas(image, pred, InferenceOptions()), seeds, args.seq_seconds
        ) | {"peak_gpu_gib": peak_memory_gib(device)}
        log.info("%s (a) %s", name, entry["a_sequential_fp32"])
        del pred
        write_results(args, results)

        # (b) the batched bf16 engine: the volume's blocks (with context) filled together
        # in worker processes, their FOVs sharing forward passes
        # (ffnflow.ffn.workers.segment_canvases_in_workers).
        grids = [args.grid] + ([args.grid2] if args.grid2 else [])
        if args.quick:
            grids = [[1, 1, 2]]
        block_seeds: dict[tuple[int, ...], tuple[list, float]] = {}  # per grid, reused
        for v, variant in enumerate(args.b_variants or [{}]):
            variant = {
                "batch": args.b_batch,
                "flight": args.in_flight,
                "objects": args.block_objects,
                "lookahead": args.block_lookahead,
                "target": 0,
                "step": 8,
            } | variant
            pred = FovPredictor(
                loaded.model,
                str(device),
                args.b_precision,
                deterministic=False,
                fixed_batch=variant["batch"] or None,
                pow2_batches=args.b_conv != "triton",  # Triton kernels take any batch size
                conv=args.b_conv,
                residual=args.b_residual,
                bucket_step=variant["step"],
            )
            t0 = time.perf_counter()
            sizes = {batch_bucket(k, pred.bucket_step) for k in range(1, args.max_batch + 1)}
            for n in [pred.fixed_batch] if pred.fixed_batch else sorted(sizes, reverse=True):
                warm(pred, n)  # compile, and a cuDNN plan per padded batch size
            warm_s = time.perf_counter() - t0
            for i, grid in enumerate(grids):
                # the names of runs 1-4; variants after the first: their settings
                key = "b_batched_bf16_blocks" + ("_grid2" if i else "")
                if v:
                    key += "_" + "_".join(f"{k}{variant[k]}" for k in VARIANT_KEYS)
                entry[key] = run_b(
                    args, image, grid, pred, flops, entry, warm_s, block_seeds, variant
                )
                log.info("%s (b) %s", name, entry[key])
                warm_s = 0.0
                write_results(args, results)
            del pred
        results["throughput"][name] = entry
        write_results(args, results)


def run_b(args, image, grid, pred, flops, entry, warm_s, seed_cache, variant) -> dict[str, Any]:
    """(b) over ``image`` as a ``grid`` of blocks; the stats (see section_throughput).
    ``seed_cache``: the blocks' seeds per grid, filled on first use; ``variant``: calls in
    flight, objects and lookahead per block, target batch (see ``b_variant``)."""
    device = pred.device
    in_flight = variant["flight"]
    blocks = block_slices(image.shape, grid, args.context)
    if tuple(grid) not in seed_cache:
        t0 = time.perf_counter()
        seed_cache[tuple(grid)] = ([seeds_of(image[b]) for b in blocks], time.perf_counter() - t0)
    block_seeds, seeding_s = seed_cache[tuple(grid)]
    reset_peak(device)
    timed = TimedPredictor(pred)
    canvases = [
        BatchedCanvas(
            image[b],
            pred,
            InferenceOptions(),
            max_objects=variant["objects"],
            lookahead=variant["lookahead"],
        )  # fmt: skip
        for b in blocks
    ]
    t0 = time.perf_counter()
    gpu_s0 = pred.gpu_seconds
    feed: dict[str, Any] = {}
    res = segment_canvases_in_workers(
        canvases,
        block_seeds,
        timed,
        args.fill_workers,
        max_batch=args.max_batch,
        in_flight=in_flight,
        batch=variant["target"] or None,
        stats=feed,
    )
    wall = time.perf_counter() - t0
    gpu_s = pred.gpu_seconds - gpu_s0
    run = sum(int(r.counters["fov_evaluations_total"]) for r in res)
    kept = sum(int(r.counters["fov_evaluations"]) for r in res)
    calls = len(timed.calls)
    a_rate = max(entry["a_sequential_fp32"]["fov_per_s"], 1e-9)
    steady = timed.steady_rate(t0)
    stats = {
        "grid": list(grid),
        "blocks": len(blocks),
        "context": args.context,
        "objects_per_block": variant["objects"],
        "lookahead_per_block": variant["lookahead"],
        "target_batch": variant["target"] or None,
        "bucket_step": pred.bucket_step,
        "fill_workers": args.fill_workers,
        "precision": pred.precision,
        "conv": pred.conv,
        "residual": pred.residual,
        "compiled": pred.compiled,
        "block_seeding_s": round(seeding_s, 2),
        "warmup_s": round(warm_s, 1),
        "wall_s": round(wall, 2),
        "fov_evaluations_run": run,
        "fov_evaluations_kept": kept,
        "fov_per_s": round(run / wall, 2),
        "fov_per_s_kept": round(kept / wall, 2),
        "tflops": round(run * flops / wall / 1e12, 2),
        "steady_fov_per_s": steady["fov_per_s"],
        "steady_tflops": round(steady["fov_per_s"] * flops / 1e12, 2),
        "steady_window_s": steady["window_s"],
        "model_calls": calls,
        "mean_batch": round(run / max(calls, 1), 1),
        "fixed_batch": pred.fixed_batch,
        "in_flight": in_flight,
        "mean_padded_batch": round(
            sum(pred.fixed_batch or batch_bucket(n, pred.bucket_step) for _, _, n in timed.calls)
            / max(calls, 1),
            1,
        ),
        # device time of the model calls (CUDA events), as a share of the run
        "gpu_busy_fraction": round(gpu_s / wall, 3) if device.type == "cuda" else None,
        "fov_per_gpu_s": round(run / gpu_s, 1) if gpu_s > 0 else None,
        "voxels_per_s_blocks": round(sum(image[b].size for b in blocks) / wall, 1),
        "peak_gpu_gib": peak_memory_gib(device),
        "feed": feed,
        "speedup_vs_a": round(run / wall / a_rate, 2),
        "speedup_vs_a_kept": round(kept / wall / a_rate, 2),
        "steady_speedup_vs_a": round(steady["fov_per_s"] / a_rate, 2),
    }
    return stats


def fib25_training_data(args, arch: ModelArch):
    from ffnflow.ffn.training.coordinates import (
        ExampleCoordinates,
        example_margin,
        region_coordinates,
    )
    from ffnflow.ffn.training.examples import TrainingVolume
    from ffnflow.ffn.training.partitions import DEFAULT_THRESHOLDS

    with h5py.File(Path(args.data) / "fib25_s2_train.h5", "r") as f:
        raw, labels = f["raw"][:, :, :125], f["labels"][:, :, :125]  # x 0-125 only
    if args.quick:
        raw, labels = raw[:64, :96], labels[:64, :96]
    margin = example_margin(arch.fov_size_zyx, arch.deltas_zyx)
    coords, partition = region_coordinates(
        labels, (0, 0, 0), margin, DEFAULT_THRESHOLDS, 1000, 200000
    )
    name = "fib25_s2_train_x0-125"
    return [TrainingVolume(name, raw, labels, (0, 0, 0))], [
        ExampleCoordinates(name, coords, partition)
    ]


def training_arch(args) -> ModelArch:
    if args.quick:
        return ModelArch(depth=2, features=8, fov_size_zyx=(17,) * 3, deltas_zyx=(4,) * 3)
    return load_checkpoint(CHECKPOINT).model.arch


def section_training(args, device, results) -> None:
    from ffnflow.ffn.training.prefetch import Prefetcher
    from ffnflow.ffn.training.sampler import BalancedSampler
    from ffnflow.ffn.training.trainer import Trainer, TrainingOptions

    arch = training_arch(args)
    volumes, examples = fib25_training_data(args, arch)
    out = []
    for precision, batch in [("bf16", b) for b in args.train_batches] + [
        ("fp32", args.train_batches[0])
    ]:
        options = TrainingOptions(
            arch=arch, batch_size=batch, device=str(device), precision=precision
        )
        trainer = Trainer(volumes, BalancedSampler(examples), options)
        reset_peak(device)
        with Prefetcher(trainer.make_example, 0, depth=4 * batch) as source:
            trainer.source = source
            for _ in range(3):
                trainer.train_step()
            sync(device)
            f0, t0 = trainer.fovs, time.perf_counter()
            while time.perf_counter() - t0 < args.train_seconds:
                loss = trainer.train_step()
            float(loss)
            sync(device)
            wall = time.perf_counter() - t0
            trainer.source = None
        fovs = trainer.fovs - f0
        row = {
            "precision": precision,
            "batch": batch,
            "fov_per_s": round(fovs / wall, 1),
            "tflops_fwd_bwd": round(fovs / wall * 3 * arch.flops_per_fov / 1e12, 2),
            "examples_per_s": round(trainer.next_example / wall, 2),
            "peak_gpu_gib": peak_memory_gib(device),
        }
        out.append(row)
        log.info("training %s", row)
        del trainer
    results["training"] = out


def evaluate_on_eval_half(args, device, checkpoint: Path) -> dict[str, Any]:
    """Quick GPU evaluation on x 125-250: bf16, one object at a time (on one canvas,
    batching does not pay: section ``throughput``), PolicyPeaks seeds."""
    loaded = load_checkpoint(checkpoint)
    with h5py.File(Path(args.data) / "fib25_s2_train.h5", "r") as f:
        raw, labels = f["raw"][:, :, 125:], f["labels"][:, :, 125:]
    if args.quick:
        raw, labels = raw[:48, :64, :64], labels[:48, :64, :64]
    image = normalise(raw, loaded)
    pred = predictor(loaded, device, "bf16")
    res = Canvas(image, pred, InferenceOptions()).segment_all(seeds_of(image))
    m = segmentation_metrics(labels, res.labels)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()} | {
        "fov_evaluations": int(res.counters["fov_evaluations"]),
        "wall_s": float(res.counters["wall_s"]),
    }


def section_finetune(args, device, results) -> None:
    from ffnflow.ffn.training.run import train_ffn
    from ffnflow.ffn.training.trainer import TrainingOptions

    arch = training_arch(args)
    volumes, examples = fib25_training_data(args, arch)
    rate = next(
        (r["fov_per_s"] for r in results.get("training", []) if r["precision"] == "bf16"
         and r["batch"] == args.finetune_batch), None,
    )  # fmt: skip
    steps = int(rate * 60 * args.finetune_minutes / args.finetune_batch) if rate else 100000
    options = TrainingOptions(
        arch=arch,
        steps=max(steps, 10),
        batch_size=args.finetune_batch,
        optimizer="adam",
        learning_rate=args.finetune_lr,
        lr_schedule="cosine",
        device=str(device),
        precision="bf16",
        checkpoint_every=10**9,
        validate_every=0,
        log_every=50,
        max_minutes=args.finetune_minutes,
        seed=0,
    )
    out_dir = Path(args.out)
    ckpt = out_dir / "ffn_finetuned.pt"
    init = None if args.quick else CHECKPOINT
    loaded = load_checkpoint(CHECKPOINT)
    t0 = time.perf_counter()
    rows = train_ffn(
        volumes,
        examples,
        options,
        ckpt,
        out_dir / "finetune_log.csv",
        out_dir / "finetune_loss.png",
        Path("/tmp") / "ffnflow_finetune_state.pt",
        loaded.normalization,
        loaded.resolution_nm or (10.0, 10.0, 10.0),
        sources={"fib25_s2_train.h5": "x 0-125"},
        init_checkpoint=init,
    )
    wall = time.perf_counter() - t0
    entry = {
        "steps_planned": options.steps,
        "steps_done": rows[-1]["step"] if rows else 0,
        "fovs": rows[-1]["fovs"] if rows else 0,
        "wall_s": round(wall, 1),
        "batch": args.finetune_batch,
        "learning_rate": args.finetune_lr,
        "loss_first": rows[0]["loss"] if rows else None,
        "loss_last": rows[-1]["loss"] if rows else None,
        "checkpoint": ckpt.name,
    }
    results["finetune"] = entry
    write_results(args, results)
    log.info("finetune %s", entry)
    if args.finetune_eval and not args.quick:
        entry["gpu_eval_x125_250"] = {
            "published": evaluate_on_eval_half(args, device, CHECKPOINT),
            "finetuned": evaluate_on_eval_half(args, device, ckpt),
        }
        log.info("finetune eval %s", entry["gpu_eval_x125_250"])


def write_results(args, results) -> None:
    path = Path(args.out) / "gpu_acceptance.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    tmp.replace(path)


VARIANT_KEYS = ("batch", "flight", "objects", "lookahead", "target", "step")


def b_variant(text: str) -> dict[str, int]:
    """A (b) variant, ``KEY=N,...`` with keys ``batch`` (FOVs per call, padded; 0: any
    size), ``flight`` (calls in flight), ``objects`` and ``lookahead`` (per block),
    ``target`` (with batch 0: FOVs queued before a second call starts), ``step`` (with
    batch 0: calls padded to multiples of this up to 64; 1, 2, 4 or 8)."""
    out = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key not in VARIANT_KEYS or not value.isdigit():
            raise argparse.ArgumentTypeError(
                f"--b-variants {text!r}: expected KEY=N,... with keys {', '.join(VARIANT_KEYS)}"
            )
        out[key] = int(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="output folder (JSON, log, fine-tuned checkpoint)")
    parser.add_argument(
        "--data", default=os.environ.get("FFNFLOW_DATA", str(REPO.parent / "shared" / "data"))
    )
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--deadline-s", type=float, default=0, help="skip sections that start after this (0: none)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny crops and models (CPU test)")
    parser.add_argument("--parity-objects", type=int, default=16)
    parser.add_argument(
        "--parity-variants", nargs="+",
        default=["fp32_batched", "bf16_batched", "fp16_batched", "bf16_batched_conv3d"],
    )  # fmt: skip
    parser.add_argument("--volumes", nargs="*", default=None, help="name parts (s2, s1)")
    parser.add_argument("--grid2", type=int, nargs=3, default=None, help="a second grid")
    parser.add_argument(
        "--b-precision", default="fp16", help="precision of (b) (bf16 disagrees with fp32)"
    )
    parser.add_argument(
        "--b-residual", default="fp32", help="residual stream of (b): fp32 or low (zsplit)"
    )
    parser.add_argument(
        "--b-conv", default="auto", help="convolutions of (b): auto, zsplit, triton"
    )
    parser.add_argument(
        "--triton-launch", default=None, help="Triton kernel launch, e.g. m128,w4,s3,u1"
    )
    parser.add_argument("--forward-batches", type=int, nargs="+", default=[1, 64, 256, 1024])
    parser.add_argument("--forward-seconds", type=float, default=1.0)
    parser.add_argument("--seq-seconds", type=float, default=15.0)
    parser.add_argument("--finetune-eval", action="store_true", help="GPU evaluation after it")
    parser.add_argument("--grid", type=int, nargs=3, default=[4, 4, 4], help="blocks of (b)")
    parser.add_argument("--context", type=int, default=16, help="block context (voxels)")
    parser.add_argument("--block-objects", type=int, default=16, help="objects per block")
    parser.add_argument("--block-lookahead", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=512, help="FOVs per model call")
    parser.add_argument(
        "--b-batch", type=int, default=0,
        help="FOVs per model call of (b), padded (0: any size, padded to a few sizes; fixed "
        "sizes ran slower on an H200, run 13)",
    )  # fmt: skip
    parser.add_argument("--in-flight", type=int, default=2, help="model calls in flight in (b)")
    parser.add_argument(
        "--b-variants", nargs="+", default=None, type=b_variant,
        help="several (b) runs per volume, e.g. batch=48,flight=2 batch=0,objects=32,target=32",
    )  # fmt: skip
    parser.add_argument(
        "--fill-workers", type=int, default=max(1, min(14, (os.cpu_count() or 2) - 2)),
        help="worker processes of (b)",
    )  # fmt: skip
    parser.add_argument("--train-batches", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--train-seconds", type=float, default=8.0)
    parser.add_argument("--finetune-minutes", type=float, default=1.5)
    parser.add_argument("--finetune-batch", type=int, default=32)
    parser.add_argument("--finetune-lr", type=float, default=5e-5)
    args = parser.parse_args()
    if args.quick:  # the CPU: no batches of 512 FOVs through the full model
        args.max_batch, args.block_objects = 4, 2
        args.b_batch = min(args.b_batch, 4)
        for v in args.b_variants or []:
            v["batch"] = min(v.get("batch", args.b_batch), 4)
            v["objects"] = min(v.get("objects", args.block_objects), 2)
    if args.triton_launch:
        import ffnflow.ffn.triton_conv as triton_conv  # needs Triton

        triton_conv.LAUNCH = triton_conv.parse_launch(args.triton_launch)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        handlers=[
            logging.StreamHandler(sys.stdout),
            logging.FileHandler(out / "gpu_acceptance.log"),
        ],
    )
    from ffnflow.ffn.predictor import resolve_device

    device = resolve_device(args.device)
    results: dict[str, Any] = {"sections": {}}
    start = time.perf_counter()
    for name in args.sections.split(","):
        fn = globals()[f"section_{name}"]
        t0 = time.perf_counter()
        if args.deadline_s and t0 - start > args.deadline_s:
            results["sections"][name] = {"status": "skipped: deadline", "wall_s": 0.0}
            continue
        log.info("== %s", name)
        try:
            fn(args, device, results)
            status = "ok"
        except Exception:  # a failed section must not cost the others
            status = traceback.format_exc()
            log.error("section %s failed:\n%s", name, status)
        results["sections"][name] = {"status": status, "wall_s": round(time.perf_counter() - t0, 1)}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        write_results(args, results)
    log.info("done: %s", json.dumps(results["sections"]))


if __name__ == "__main__":
    main()
