"""FFN forward pass on a GPU at the batched engine's batch sizes: CUDA graphs, chunks, copies.

The batched engine's model calls hold about 40 FOVs. This times the compiled z-split model
(FIB-25: depth 12, 32 features, 33^3 FOVs; float16 convolutions) per batch size, launched
normally and replayed as a CUDA graph, and a call of ``--total`` FOVs run as chunks of
``B`` FOVs inside one graph (a chunk's intermediate tensors may stay in the L2 cache
between a convolution and the element-wise pass after it). Also the host-device copies of
one call. Prints one row per measurement (FOV/s, TFLOP/s at ~50 GFLOP per FOV) and
writes them as JSON.

Usage: python benchmarks/ffn_chunk_sweep.py OUT.json [--total 40] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ffnflow.ffn.model import load_checkpoint  # noqa: E402
from ffnflow.ffn.zsplit import ZSplitStack  # noqa: E402

CHECKPOINT = REPO / "models" / "ffn_fib25_google.pt"


def timed(fn, seconds: float) -> float:
    """Seconds per call of ``fn`` (CUDA events over as many calls as ``seconds`` allow)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    reps = max(3, int(seconds / max(time.perf_counter() - t0, 1e-6)))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def graphed(fn, *args):
    """``fn(*args)`` captured as a CUDA graph (after warm-up on a side stream)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn(*args)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(*args)
    return graph.replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json_out")
    parser.add_argument("--total", type=int, default=40, help="FOVs of one chunked call")
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 4, 8, 16, 40, 64, 256])
    parser.add_argument("--chunks", type=int, nargs="+", default=[2, 4, 8, 20])
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    model = load_checkpoint(CHECKPOINT).model.to(device).eval()
    flops = model.arch.flops_per_fov
    s = model.arch.fov_size_zyx
    rows: list[dict] = []

    def row(**kw) -> None:
        rows.append(kw)
        print(kw, flush=True)
        Path(args.json_out).write_text(json.dumps(rows, indent=1) + "\n")

    def inputs(n: int) -> torch.Tensor:
        gen = torch.Generator(device="cpu").manual_seed(n)
        x = torch.randn(n, 2, *s, generator=gen).to(device)
        return x.contiguous(memory_format=torch.channels_last_3d)

    h = torch.float16
    configs = [
        ("res16 dynamic", h, True, args.batches, args.chunks),
        ("res16 static", h, False, [4, args.total], [4]),
        ("res32 dynamic", torch.float32, True, [4, args.total], [4]),
    ]
    with torch.inference_mode():
        for name, stream, dynamic, batches, chunks in configs:
            fn = torch.compile(ZSplitStack(model, h, stream).to(device), dynamic=dynamic)
            t0 = time.perf_counter()
            fn(*inputs(batches[0]).split(1, dim=1))
            torch.cuda.synchronize()
            row(what=f"{name} first call", batch=batches[0], s=round(time.perf_counter() - t0, 1))
            for b in batches:
                x = inputs(b)
                i, p = x[:, 0:1], x[:, 1:2]
                for mode in ("launch", "graph"):
                    try:
                        call = partial(fn, i, p) if mode == "launch" else graphed(fn, i, p)
                        t = timed(call, args.seconds)
                        row(
                            what=f"{name} {mode}",
                            batch=b,
                            ms=round(t * 1e3, 3),
                            fov_per_s=round(b / t, 1),
                            tflops=round(b * flops / t / 1e12, 1),
                        )
                    except Exception as exc:  # noqa: BLE001 - report and go on
                        row(what=f"{name} {mode}", batch=b, error=repr(exc)[:300])
            x = inputs(args.total)
            for c in chunks:
                if args.total % c:
                    continue
                views = [x[k : k + c] for k in range(0, args.total, c)]

                def chunked(views=views, fn=fn):
                    return [fn(v[:, 0:1], v[:, 1:2]) for v in views]

                try:
                    t = timed(graphed(chunked), args.seconds)
                    row(
                        what=f"{name} graph chunks of {c}",
                        batch=args.total,
                        ms=round(t * 1e3, 3),
                        fov_per_s=round(args.total / t, 1),
                        tflops=round(args.total * flops / t / 1e12, 1),
                    )
                except Exception as exc:  # noqa: BLE001
                    row(what=f"{name} graph chunks of {c}", batch=args.total, error=repr(exc)[:300])
        # The host-device copies of one engine call (pinned host memory).
        n = args.total
        host_in = torch.empty((n, 2, *s), pin_memory=True)
        host_out = torch.empty((n, *s), pin_memory=True)
        dev_in = torch.empty((n, 2, *s), device=device)
        dev_out = torch.empty((n, *s), device=device)
        t_in = timed(lambda: dev_in.copy_(host_in, non_blocking=True), args.seconds / 2)
        t_out = timed(lambda: host_out.copy_(dev_out, non_blocking=True), args.seconds / 2)
        row(
            what="copies per call",
            batch=n,
            h2d_ms=round(t_in * 1e3, 3),
            d2h_ms=round(t_out * 1e3, 3),
            h2d_gb_s=round(host_in.nbytes / t_in / 1e9, 1),
        )
    print(f"\n{'what':36s} {'batch':>5s} {'ms':>9s} {'FOV/s':>8s} {'TFLOP/s':>8s}")
    for r in rows:
        if "fov_per_s" in r:
            print(
                f"{r['what']:36s} {r['batch']:5d} {r['ms']:9.3f} {r['fov_per_s']:8.1f} "
                f"{r['tflops']:8.1f}"
            )


if __name__ == "__main__":
    main()
