"""FFN forward pass on a GPU: how fast can a 3x3x3, 32-feature convolution stack go?

Times, on the published FIB-25 model (depth 12, 32 features, 33^3 FOVs), one layer and
the whole model in several formulations, checks each against float64-free float32
references (relative L2 error), and prints a table (FOV/s, TFLOP/s):

- ``conv3d``      cuDNN 3D convolution, channels_last_3d (what ffnflow runs);
- ``zsplit``      the 3x3x3 convolution as one 2D 3x3 convolution over (y, x) of every
                  z section giving the three z taps as 3x the output channels, then a
                  shifted sum over z (2D convolutions are cuDNN's best tuned kernels);
- ``zstack``      the three z neighbours stacked as 3x the input channels, one 2D 3x3
                  convolution;
- ``triton``      one fused Triton kernel (implicit GEMM over the 27 taps; CUDA), for
                  several launch parameters (rows per program, warps, unrolled taps or a
                  pipelined loop with 2-4 stages); ``p1`` launches: the pair kernel (two z
                  sections per program, 9 products of 128-deep sums and 64 outputs);
- whole models:   ffnflow's mixed bf16 stack (fp32 residual) eager and compiled, the
                  all-bf16 stack, the zsplit stack eager and compiled, and the Triton
                  stack (bf16 and fp16) with the ``--model-launches`` fastest layer
                  launches, the zsplit stack with a float16 residual stream
                  (``--models REGEX`` selects).

Usage: python benchmarks/ffn_forward_variants.py [--batches 128 512] [--seconds 1.5]
       [--no-compile] [--json OUT.json] [--models REGEX] [--best-launch-file F]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ffnflow.ffn.model import load_checkpoint  # noqa: E402
from ffnflow.ffn.predictor import FovPredictor, triton_available  # noqa: E402
from ffnflow.ffn.zsplit import ZSplitStack  # noqa: E402

CHECKPOINT = REPO / "models" / "ffn_fib25_google.pt"


def bench(fn, seconds: float, device: torch.device) -> float:
    """Seconds per call (median of timed groups of calls, after warm-up)."""
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    times = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(times) < 3:
        t0 = time.perf_counter()
        for _ in range(2):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / 2)
    times.sort()
    return times[len(times) // 2]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def triton_launches(names: list[str] | None = None) -> list:
    """The Triton kernels' launch parameters to try (``names``, or every one): taps unrolled
    (L1-cached loads) or a pipelined loop (asynchronous copies), 64-256 rows per program, 4
    or 8 warps; the tap kernel and the pair kernel."""
    from dataclasses import replace

    from ffnflow.ffn.triton_conv import Launch, parse_launch

    if names:
        return [parse_launch(name) for name in names]
    unrolled = [Launch(m, w, 1, True) for m in (64, 128, 256) for w in (4, 8)]
    looped = [Launch(m, w, st, False) for m in (64, 128, 256) for w in (4, 8) for st in (2, 3, 4)]
    pair = [replace(k, pair=True) for k in unrolled + looped if k.num_stages < 4]
    return unrolled + looped + pair


def best_launches(rows: list[dict], k: int) -> list:
    """The ``k`` fastest Triton launches of the layer rows."""
    timed = [r for r in rows if r["what"].startswith("layer triton ") and "ms" in r]
    if not timed:
        return []
    from ffnflow.ffn.triton_conv import parse_launch

    timed.sort(key=lambda r: r["ms"])
    return [parse_launch(r["what"].split()[-1]) for r in timed[:k]]


def layer_variants(
    batch: int, device: torch.device, seconds: float, launches: list[str] | None = None
) -> list[dict]:
    """One 32->32 3x3x3 convolution (bf16) in three formulations."""
    c, s = 32, 33
    gen = torch.Generator(device="cpu").manual_seed(0)
    x32 = torch.randn(batch, c, s, s, s, generator=gen).to(device)
    w32 = (torch.randn(c, c, 3, 3, 3, generator=gen) / 15).to(device)
    b32 = torch.randn(c, generator=gen).to(device)
    with torch.backends.cudnn.flags(enabled=True, benchmark=True, allow_tf32=False):
        ref = F.conv3d(x32, w32, b32, padding=1)
    x = x32.to(torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
    w = w32.to(torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
    b = b32.to(torch.bfloat16)
    xn = x.permute(0, 2, 3, 4, 1)  # (B, Z, Y, X, C) view, contiguous
    # zsplit weights: (3*Cout, Cin, 3, 3), tap dz major
    w_split = (
        w.permute(2, 0, 1, 3, 4)
        .reshape(3 * c, c, 3, 3)
        .contiguous(memory_format=torch.channels_last)
    )
    # zstack weights: (Cout, 3*Cin, 3, 3), input channels dz major
    w_stack = (
        w.permute(0, 2, 1, 3, 4)
        .reshape(c, 3 * c, 3, 3)
        .contiguous(memory_format=torch.channels_last)
    )
    from ffnflow.ffn.zsplit import zsplit_conv

    def f_conv3d():
        return F.conv3d(x, w, b, padding=1)

    def f_zsplit():
        return zsplit_conv(xn, w_split, b)

    def f_zsplit_conv_only():
        x2 = xn.reshape(batch * s, s, s, c).permute(0, 3, 1, 2)
        return F.conv2d(x2, w_split, None, padding=1)

    def z_stacked():
        """(B*Z, 3C, Y, X): every section's z neighbours side by side as features."""
        pad = F.pad(xn, (0, 0, 0, 0, 0, 0, 1, 1))  # (B, Z+2, Y, X, C)
        st = torch.cat([pad[:, :-2], pad[:, 1:-1], pad[:, 2:]], dim=-1)  # (B,Z,Y,X,3C)
        return st.reshape(batch * s, s, s, 3 * c).permute(0, 3, 1, 2)

    def f_zstack():
        return F.conv2d(z_stacked(), w_stack, b, padding=1)

    x_stacked = z_stacked()

    def f_zstack_conv_only():
        return F.conv2d(x_stacked, w_stack, None, padding=1)

    variants = [
        ("conv3d", f_conv3d, lambda o: o),
        ("zsplit", f_zsplit, lambda o: o.permute(0, 4, 1, 2, 3)),
        ("zsplit_conv2d_only", f_zsplit_conv_only, None),
        ("zstack_conv2d_only", f_zstack_conv_only, None),
        (
            "zstack",
            f_zstack,
            lambda o: o.permute(0, 2, 3, 1).reshape(batch, s, s, s, c).permute(0, 4, 1, 2, 3),
        ),
    ]
    if device.type == "cuda" and triton_available():
        from ffnflow.ffn.triton_conv import conv3x3x3, relaid_weight

        for launch in triton_launches(launches):
            w_launch = relaid_weight(w32, torch.bfloat16, launch)

            def f_triton(launch=launch, w_launch=w_launch):
                return conv3x3x3(xn, w_launch, b32, launch=launch)[0]

            variants.append((f"triton {launch}", f_triton, lambda o: o.permute(0, 4, 1, 2, 3)))
    flops = 2.0 * 27 * c * c * s**3 * batch
    rows = []
    with torch.inference_mode(), torch.backends.cudnn.flags(enabled=True, benchmark=True):
        for name, fn, to_ncdhw in variants:
            try:
                t = bench(fn, seconds, device)
                err = rel_err(to_ncdhw(fn()), ref) if to_ncdhw else None
                rows.append(
                    {
                        "what": f"layer {name}",
                        "batch": batch,
                        "ms": round(t * 1e3, 3),
                        "fov_per_s": round(batch / t, 1),
                        "tflops": round(flops / t / 1e12, 1),
                        "rel_err": None if err is None else round(err, 5),
                    }
                )
            except Exception as exc:  # noqa: BLE001 - a variant may be unsupported
                rows.append({"what": f"layer {name}", "batch": batch, "error": repr(exc)[:200]})
            print(rows[-1], flush=True)
    return rows


def model_variants(
    batch: int,
    device: torch.device,
    seconds: float,
    compile_: bool,
    launches: list,
    only: str | None = None,
):
    loaded = load_checkpoint(CHECKPOINT)
    model = loaded.model
    flops = model.arch.flops_per_fov * batch
    s = model.arch.fov_size_zyx
    gen = torch.Generator(device="cpu").manual_seed(1)
    image = torch.randn(batch, 1, *s, generator=gen).to(device)
    pom = (torch.rand(batch, 1, *s, generator=gen) * 6 - 3).to(device)
    ref_pred = FovPredictor(model, str(device), "fp32")
    with torch.inference_mode(), ref_pred._cudnn_flags():
        ref = ref_pred._forward(
            image.contiguous(memory_format=torch.channels_last_3d),
            pom.contiguous(memory_format=torch.channels_last_3d),
        )
    variants = {}
    mixed = FovPredictor(model, str(device), "bf16", deterministic=False)
    variants["model mixed_bf16 eager"] = mixed._forward
    allbf = FovPredictor(model, str(device), "fp32", deterministic=False)
    allbf_model = allbf.model.to(torch.bfloat16)
    variants["model all_bf16 eager"] = lambda i, p: allbf_model(
        i.to(torch.bfloat16), p.to(torch.bfloat16)
    ).float()
    zs = ZSplitStack(model).to(device)
    variants["model zsplit eager"] = zs
    if device.type == "cuda" and triton_available():
        from ffnflow.ffn.triton_conv import TritonStack

        for launch in launches:
            for name, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
                variants[f"model triton {name} {launch}"] = TritonStack(
                    model, dt, launch=launch
                ).to(device)
    if only:
        variants = {k: v for k, v in variants.items() if re.search(only, k)}
    if compile_ and (not only or re.search(only, "model mixed_bf16 compiled")):
        variants["model mixed_bf16 compiled"] = torch.compile(mixed._forward, dynamic=False)
    if compile_ and (not only or re.search(only, "model zsplit compiled")):
        variants["model zsplit compiled"] = torch.compile(zs, dynamic=False)
    full = "model zsplit res16 fp16 compiled"  # float16 convolutions and residual stream
    if compile_ and (not only or re.search(only, full)):
        h = torch.float16
        variants[full] = torch.compile(ZSplitStack(model, h, h).to(device), dynamic=False)
    rows = []
    i_cl = image.contiguous(memory_format=torch.channels_last_3d)
    p_cl = pom.contiguous(memory_format=torch.channels_last_3d)
    for name, fn in variants.items():
        try:
            t0 = time.perf_counter()
            with (
                torch.inference_mode(),
                torch.backends.cudnn.flags(enabled=True, benchmark=True, allow_tf32=False),
            ):
                out = fn(i_cl, p_cl)
                first_s = time.perf_counter() - t0
                t = bench(lambda fn=fn: fn(i_cl, p_cl), seconds, device)
            rows.append(
                {
                    "what": name,
                    "batch": batch,
                    "ms": round(t * 1e3, 3),
                    "fov_per_s": round(batch / t, 1),
                    "tflops": round(flops / t / 1e12, 1),
                    "rel_err_vs_fp32": round(rel_err(out, ref), 5),
                    "first_call_s": round(first_s, 1),
                }
            )
        except Exception as exc:  # noqa: BLE001
            rows.append({"what": name, "batch": batch, "error": repr(exc)[:300]})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--layers-only", action="store_true")
    parser.add_argument("--model-batches", type=int, nargs="+", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--triton-launches", nargs="+", default=None, help="e.g. m128,w4,s3,u0 m64,w8,s1,u1"
    )
    parser.add_argument("--models", default=None, help="regex: the model variants to time")
    parser.add_argument(
        "--best-launch-file", default=None, help="write the fastest Triton model's launch here"
    )
    parser.add_argument(
        "--model-launches", type=int, default=3, help="the k fastest Triton layer launches"
    )
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for batch in args.batches:
        rows += layer_variants(batch, device, args.seconds, args.triton_launches)
    if not args.layers_only:
        for batch in args.model_batches or args.batches:
            launches = best_launches(rows, args.model_launches)
            rows += model_variants(
                batch, device, args.seconds, not args.no_compile, launches, args.models
            )
    print(f"\n{'what':32s} {'batch':>5s} {'ms':>9s} {'FOV/s':>8s} {'TFLOP/s':>8s} {'err':>8s}")
    for r in rows:
        err = r.get("rel_err", r.get("rel_err_vs_fp32"))
        if "error" in r:
            print(f"{r['what']:32s} {r['batch']:5d} ERROR {r['error'][:80]}")
        else:
            print(
                f"{r['what']:32s} {r['batch']:5d} {r['ms']:9.3f} {r['fov_per_s']:8.1f} "
                f"{r['tflops']:8.1f} {err if err is not None else '':>8}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    models = [r for r in rows if r["what"].startswith("model triton fp16 ") and "ms" in r]
    if models and args.best_launch_file:
        best = min(models, key=lambda r: r["ms"] / r["batch"])
        Path(args.best_launch_file).write_text(best["what"].split()[-1] + "\n")
        print(f"fastest Triton model: {best['what']} ({best['fov_per_s']} FOV/s)")


if __name__ == "__main__":
    main()
