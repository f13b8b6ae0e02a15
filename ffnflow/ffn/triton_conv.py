"""The FFN's 3x3x3 convolutions as one fused Triton kernel each (CUDA; needs Triton).

The z-split formulation (:mod:`ffnflow.ffn.zsplit`) writes a 3x wider tap tensor and reads
it back, and the float32 residual stream costs extra element-wise passes: together about
40 % of the model's time on an H200. Here one kernel computes a whole 3x3x3 convolution as
an implicit GEMM over the 27 taps (each tap a ``(BLOCK_M, C) @ (C, C')`` product of
contiguous channels-last rows, zero outside the volume) and does the rest in its
epilogue: bias, the residual addition into the float32 stream, and the ReLU and cast that
feed the next convolution. A residual block is then two kernels and about 512 bytes of
memory traffic per voxel. The first convolution (image and POM logits, 2 features, float32)
is one kernel of float32 multiply-adds that writes the residual stream and its ReLU, and
the last one ends with the final 1x1x1 convolution and the addition of the input logits.

Two kernels, chosen by the launch parameters:

- the tap kernel (default): 27 ``(BLOCK_M, C) @ (C, C')`` products per program;
- the pair kernel (``p1``): two z sections per program, per (dy, dx) tap the four input
  sections' rows side by side times a ``(4C, 2C')`` kernel (two of its eight blocks zero):
  9 deeper and wider products (:func:`pair_weight`).

On an H200 (batch 256, ``benchmarks/results/ffn_forward_variants_*_h200.log``) one layer
ran at 202-205 TFLOP/s (tap) and 218 (pair); the z-split 2D convolution alone at 356.
The pair kernel's model (4476-4533 FOV/s) matched z-split compiled at best. A third
kernel on zero-haloed activations (no bounds checks, 1-8 taps per product; commit
fb4c81d, since removed) ran at 98-166 TFLOP/s.

Launch parameters (rows per program, warps, pipeline stages, whether the taps are an
unrolled sequence or a pipelined loop, the kernel) are :data:`LAUNCH` unless given;
``"m128,w4,s3,u1"`` strings (:func:`parse_launch`) name them for benchmarks.

Activations are ``(N, z, y, x, C)`` tensors (channels last). :class:`TritonStack` is
:class:`~ffnflow.ffn.model.ConvStack3D`'s forward pass with the predictor's mixed
precision (first convolution, residual stream, final 1x1x1 convolution and the addition
of the input logits in float32; the inner convolutions' operands in ``dtype``).
Correctness is tested under Triton's interpreter on the CPU (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from ffnflow.ffn.model import ConvStack3D, RelaidConvStack


@triton.jit
def _fov_coords(offs_m, Z, Y, X):
    """The (z, y, x) within its FOV of each row ``offs_m`` of ``(N, Z, Y, X)``."""
    xx = offs_m % X
    rest = offs_m // X
    return (rest // Y) % Z, rest % Y, xx


@triton.jit
def _tap_source(offs_m, m_ok, zz, yy, xx, tap, Z, Y, X):
    """Rows ``offs_m`` (at ``zz, yy, xx`` in their FOV) shifted by tap ``tap`` (dz, dy, dx
    major), and whether that neighbour lies inside the same FOV."""
    dz = tap // 9 - 1
    dy = (tap // 3) % 3 - 1
    dx = tap % 3 - 1
    ok = m_ok & (zz + dz >= 0) & (zz + dz < Z) & (yy + dy >= 0) & (yy + dy < Y)
    ok = ok & (xx + dx >= 0) & (xx + dx < X)
    return offs_m + (dz * Y + dy) * X + dx, ok


@triton.jit
def _tap_product(
    x_ptr, w_ptr, offs_m, m_ok, zz, yy, xx, tap, Z, Y, X, CIN: tl.constexpr, COUT: tl.constexpr
):
    """One tap's ``(BLOCK_M, CIN) @ (CIN, COUT)`` product (zero outside the FOV)."""
    src, ok = _tap_source(offs_m, m_ok, zz, yy, xx, tap, Z, Y, X)
    offs_c = tl.arange(0, CIN)
    a = tl.load(x_ptr + src[:, None] * CIN + offs_c[None, :], mask=ok[:, None], other=0.0)
    w = tl.load(w_ptr + tap * CIN * COUT + offs_c[:, None] * COUT + tl.arange(0, COUT)[None, :])
    return tl.dot(a, w)


@triton.jit
def _conv3x3x3_kernel(
    x_ptr,  # (N, Z, Y, X, CIN) activations, dtype of the weights
    w_ptr,  # (27, CIN, COUT), tap (dz, dy, dx) major
    b_ptr,  # (COUT,) float32
    res_ptr,  # (N, Z, Y, X, COUT) float32, added when HAS_RES (may be out_ptr)
    out_ptr,  # (N, Z, Y, X, COUT) float32, written when WRITE_F32
    low_ptr,  # (N, Z, Y, X, COUT) dtype of x, relu(result), written when WRITE_RELU_LOW
    lom_w_ptr,  # (COUT,) float32, final 1x1x1 convolution (FINAL)
    lom_b_ptr,  # (1,) float32 (FINAL)
    pom_ptr,  # (N, Z, Y, X, 2) float32 input; channel 1 the POM logits (FINAL)
    logit_ptr,  # (N, Z, Y, X) float32 output logits (FINAL)
    total,
    Z,
    Y,
    X,
    CIN: tl.constexpr,
    COUT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HAS_RES: tl.constexpr,
    WRITE_F32: tl.constexpr,
    WRITE_RELU_LOW: tl.constexpr,
    FINAL: tl.constexpr,
    UNROLL: tl.constexpr,
    STAGES: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < total
    zz, yy, xx = _fov_coords(offs_m, Z, Y, X)
    offs_o = tl.arange(0, COUT)
    acc = tl.zeros((BLOCK_M, COUT), dtype=tl.float32)
    if UNROLL:  # plain loads: neighbouring taps hit the L1 cache
        for tap in tl.static_range(27):
            acc += _tap_product(x_ptr, w_ptr, offs_m, m_ok, zz, yy, xx, tap, Z, Y, X, CIN, COUT)
    else:  # asynchronous copies, pipelined over STAGES taps
        for tap in tl.range(0, 27, num_stages=STAGES):
            acc += _tap_product(x_ptr, w_ptr, offs_m, m_ok, zz, yy, xx, tap, Z, Y, X, CIN, COUT)
    acc += tl.load(b_ptr + offs_o)[None, :]
    rows = offs_m[:, None] * COUT + offs_o[None, :]
    if HAS_RES:
        acc += tl.load(res_ptr + rows, mask=m_ok[:, None], other=0.0)
    if WRITE_F32:
        tl.store(out_ptr + rows, acc, mask=m_ok[:, None])
    if WRITE_RELU_LOW:
        relu = tl.maximum(acc, 0.0)
        tl.store(low_ptr + rows, relu.to(low_ptr.dtype.element_ty), mask=m_ok[:, None])
    if FINAL:
        lom = tl.sum(tl.maximum(acc, 0.0) * tl.load(lom_w_ptr + offs_o)[None, :], axis=1)
        lom += tl.load(lom_b_ptr)
        lom += tl.load(pom_ptr + offs_m * 2 + 1, mask=m_ok, other=0.0)
        tl.store(logit_ptr + offs_m, lom, mask=m_ok)


@triton.jit
def _conv3x3x3_pair_kernel(
    x_ptr,  # (N, Z, Y, X, CIN) activations, dtype of the weights
    w_ptr,  # (9, 4 * CIN, 2 * COUT) from pair_weight: (dy, dx) tap major
    b_ptr,
    res_ptr,
    out_ptr,
    low_ptr,
    lom_w_ptr,
    lom_b_ptr,
    pom_ptr,
    logit_ptr,
    Z: tl.constexpr,  # the FOV's sides: compile-time constants (one model, one FOV)
    Y: tl.constexpr,
    X: tl.constexpr,
    TILES: tl.constexpr,  # (y, x) tiles per section: cdiv(Y * X, BLOCK_M)
    CIN: tl.constexpr,
    COUT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HAS_RES: tl.constexpr,
    WRITE_F32: tl.constexpr,
    WRITE_RELU_LOW: tl.constexpr,
    FINAL: tl.constexpr,
    UNROLL: tl.constexpr,
    STAGES: tl.constexpr,
):
    """One program: BLOCK_M (y, x) positions of two z sections ``o, o + 1`` of one FOV. Per
    (dy, dx) tap, the rows of the four input sections ``o - 1 .. o + 2`` side by side
    (``4 * CIN`` columns) times a ``(4 * CIN, 2 * COUT)`` kernel whose blocks are the z taps
    (two of its eight blocks are zero) give both sections at once: 9 products with 128-deep
    sums and 64 outputs instead of 27 products of 32 by 32."""
    pid = tl.program_id(0)
    PAIRS: tl.constexpr = (Z + 1) // 2
    PLANE: tl.constexpr = Y * X
    tile = pid % TILES
    rest = pid // TILES
    o0 = (rest % PAIRS) * 2
    n = rest // PAIRS
    offs_p = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    p_ok = offs_p < PLANE
    yy = offs_p // X
    xx = offs_p % X
    offs_k = tl.arange(0, 4 * CIN)
    z_in = o0 - 1 + offs_k // CIN  # the input section of each column
    z_ok = (z_in >= 0) & (z_in < Z)
    col = (n * Z + z_in) * PLANE * CIN + offs_k % CIN
    offs_j = tl.arange(0, 2 * COUT)
    w_rows = offs_k[:, None] * (2 * COUT) + offs_j[None, :]
    acc = tl.zeros((BLOCK_M, 2 * COUT), dtype=tl.float32)
    if UNROLL:
        for t in tl.static_range(9):
            acc = _pair_product(x_ptr, w_ptr, w_rows, col, z_ok, offs_p, p_ok, yy, xx, t,
                                acc, Y, X, CIN, COUT)  # fmt: skip
    else:
        for t in tl.range(0, 9, num_stages=STAGES):
            acc = _pair_product(x_ptr, w_ptr, w_rows, col, z_ok, offs_p, p_ok, yy, xx, t,
                                acc, Y, X, CIN, COUT)  # fmt: skip
    z_out = o0 + offs_j // COUT
    c_out = offs_j % COUT
    ok = p_ok[:, None] & (z_out < Z)[None, :]
    acc += tl.load(b_ptr + c_out)[None, :]
    idx = ((n * Z + z_out[None, :]) * PLANE + offs_p[:, None]) * COUT + c_out[None, :]
    if HAS_RES:
        acc += tl.load(res_ptr + idx, mask=ok, other=0.0)
    if WRITE_F32:
        tl.store(out_ptr + idx, acc, mask=ok)
    if WRITE_RELU_LOW:
        tl.store(low_ptr + idx, tl.maximum(acc, 0.0).to(low_ptr.dtype.element_ty), mask=ok)
    if FINAL:
        lom = tl.maximum(acc, 0.0) * tl.load(lom_w_ptr + c_out)[None, :]
        lom_b = tl.load(lom_b_ptr)
        for g in tl.static_range(2):
            rows = (n * Z + o0 + g) * PLANE + offs_p
            okg = p_ok & (o0 + g < Z)
            part = tl.sum(tl.where((offs_j // COUT == g)[None, :], lom, 0.0), axis=1) + lom_b
            part += tl.load(pom_ptr + rows * 2 + 1, mask=okg, other=0.0)
            tl.store(logit_ptr + rows, part, mask=okg)


@triton.jit
def _pair_product(
    x_ptr, w_ptr, w_rows, col, z_ok, offs_p, p_ok, yy, xx, t, acc, Y, X,
    CIN: tl.constexpr, COUT: tl.constexpr,
):  # fmt: skip
    """``acc`` plus tap ``t`` (dy, dx major) of the pair kernel: the four input sections'
    rows shifted by (dy, dx), zero outside the FOV, times that tap's kernel."""
    dy = t // 3 - 1
    dx = t % 3 - 1
    ok = p_ok & (yy + dy >= 0) & (yy + dy < Y) & (xx + dx >= 0) & (xx + dx < X)
    src = (offs_p + dy * X + dx) * CIN
    a = tl.load(x_ptr + src[:, None] + col[None, :], mask=ok[:, None] & z_ok[None, :], other=0.0)
    w = tl.load(w_ptr + t * (4 * CIN) * (2 * COUT) + w_rows)
    return tl.dot(a, w, acc)


@triton.jit
def _conv_first_kernel(
    x_ptr,  # (N, Z, Y, X, CIN) float32 input (image, POM logits)
    w_ptr,  # (27, CIN, COUT) float32
    b_ptr,  # (COUT,) float32
    out_ptr,  # (N, Z, Y, X, COUT) float32 result
    low_ptr,  # (N, Z, Y, X, COUT) relu(result) in the low precision
    total,
    Z,
    Y,
    X,
    CIN: tl.constexpr,
    COUT: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < total
    zz, yy, xx = _fov_coords(offs_m, Z, Y, X)
    offs_o = tl.arange(0, COUT)
    acc = tl.zeros((BLOCK_M, COUT), dtype=tl.float32)
    for tap in tl.static_range(27):
        src, ok = _tap_source(offs_m, m_ok, zz, yy, xx, tap, Z, Y, X)
        for c in tl.static_range(CIN):
            a = tl.load(x_ptr + src * CIN + c, mask=ok, other=0.0)
            w = tl.load(w_ptr + (tap * CIN + c) * COUT + offs_o)
            acc += a[:, None] * w[None, :]
    acc += tl.load(b_ptr + offs_o)[None, :]
    rows = offs_m[:, None] * COUT + offs_o[None, :]
    tl.store(out_ptr + rows, acc, mask=m_ok[:, None])
    relu = tl.maximum(acc, 0.0)
    tl.store(low_ptr + rows, relu.to(low_ptr.dtype.element_ty), mask=m_ok[:, None])


@dataclass(frozen=True)
class Launch:
    """Launch parameters of the 3x3x3 kernel: rows (voxels) per program, warps, pipeline
    stages of the tap loop, and whether the 27 taps are unrolled (then ``stages`` is
    unused). The defaults were the fastest on an H200 (194 TFLOP/s for one layer, batch
    256 FOVs; ``benchmarks/results/ffn_forward_variants_triton_h200.log``)."""

    block_m: int = 256
    num_warps: int = 4
    num_stages: int = 3
    unroll: bool = False
    pair: bool = False

    def __str__(self) -> str:
        text = f"m{self.block_m},w{self.num_warps},s{self.num_stages},u{int(self.unroll)}"
        return text + (",p1" if self.pair else "")


#: The default launch parameters (see ``benchmarks/ffn_forward_variants.py``).
LAUNCH = Launch()


def parse_launch(text: str) -> Launch:
    """``"m128,w4,s3,u1"`` (any subset, any order) as a :class:`Launch`."""
    keys = {"m": "block_m", "w": "num_warps", "s": "num_stages", "u": "unroll", "p": "pair"}
    values: dict = {}
    for part in filter(None, text.replace(" ", "").split(",")):
        if part[:1] not in keys or not part[1:].isdigit():
            raise ValueError(f"triton launch {text!r}: {part!r} is not m<int>, w, s, u or p<int>")
        values[keys[part[0]]] = int(part[1:])
    for flag in ("unroll", "pair"):
        if flag in values:
            values[flag] = bool(values[flag])
    return replace(LAUNCH, **values)


def tap_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A 3D kernel ``(C', C, 3, 3, 3)`` as ``(27, C, C')`` (tap dz, dy, dx major)."""
    if tuple(weight.shape[2:]) != (3, 3, 3):
        raise ValueError(f"triton conv: kernel {tuple(weight.shape)} is not 3x3x3")
    c_out, c_in = weight.shape[:2]
    return weight.permute(2, 3, 4, 1, 0).reshape(27, c_in, c_out).to(dtype).contiguous()


def pair_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A 3D kernel ``(C', C, 3, 3, 3)`` as the pair kernel's ``(9, 4*C, 2*C')``: per (dy, dx)
    tap, block ``(s, g)`` maps input section ``o - 1 + s`` to output section ``o + g``
    (z tap ``s - g``; zero where that is not 0, 1 or 2)."""
    taps = tap_weight(weight, torch.float32)  # (27, C, C')
    c_in, c_out = taps.shape[1:]
    out = taps.new_zeros((9, 4 * c_in, 2 * c_out))
    for s in range(4):
        for g in range(2):
            kz = s - g
            if 0 <= kz <= 2:
                out[:, s * c_in : (s + 1) * c_in, g * c_out : (g + 1) * c_out] = taps[
                    9 * kz : 9 * kz + 9
                ]
    return out.to(dtype).contiguous()


def relaid_weight(weight: torch.Tensor, dtype: torch.dtype, launch: Launch | None) -> torch.Tensor:
    """``weight`` laid out for the kernel that ``launch`` (default :data:`LAUNCH`) names."""
    return (pair_weight if (launch or LAUNCH).pair else tap_weight)(weight, dtype)


def _check_size(shape: tuple[int, ...], channels: int) -> int:
    total = 1
    for side in shape:
        total *= int(side)
    if total * channels >= 2**31:  # the kernels' offsets are 32-bit
        raise ValueError(f"triton conv: {shape[0]} FOVs of {tuple(shape[1:])} are too many")
    return total


def conv3x3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor | None = None,
    write_f32: bool = True,
    write_relu_low: bool = False,
    launch: Launch | None = None,
    final: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """3x3x3 convolution (zero padding 1) of ``x`` ``(N, z, y, x, C)`` with ``weight`` from
    :func:`relaid_weight` for ``launch`` and float32 ``bias``, plus ``residual`` (float32;
    may be updated in place: pass the same tensor as the result). Returns the float32 result (or None) and
    its ReLU in ``x``'s dtype (or None).

    With ``final = (lom_weight (C',), lom_bias (1,), inputs (N, z, y, x, 2))`` it returns
    instead the output logits ``(N, z, y, x)``: ``inputs[..., 1]`` plus the 1x1x1
    convolution of the ReLU of the result."""
    launch = launch or LAUNCH
    n, z, y, xx, c_in = x.shape
    c_out = weight.shape[2] // 2 if launch.pair else weight.shape[2]
    expected = (9, 4 * c_in, 2 * c_out) if launch.pair else (27, c_in, c_out)
    if tuple(weight.shape) != expected:
        raise ValueError(
            f"triton conv: kernel {tuple(weight.shape)} is not {expected} (launch {launch})"
        )
    x = x.contiguous()
    total = _check_size(x.shape[:4], max(c_in, c_out))
    out = None
    if write_f32 and final is None:
        out = (
            residual
            if residual is not None
            else x.new_empty((n, z, y, xx, c_out), dtype=torch.float32)
        )
    low = x.new_empty((n, z, y, xx, c_out)) if write_relu_low and final is None else None
    logits = x.new_empty((n, z, y, xx), dtype=torch.float32) if final is not None else None
    lom_w, lom_b, inputs = final if final is not None else (bias, bias, bias)
    pointers = (
        x,
        weight,
        bias,
        residual if residual is not None else bias,
        out if out is not None else bias,
        low if low is not None else x,
        lom_w,
        lom_b,
        inputs,
        logits if logits is not None else bias,
    )
    flags = {
        "CIN": c_in,
        "COUT": c_out,
        "BLOCK_M": launch.block_m,
        "HAS_RES": residual is not None,
        "WRITE_F32": out is not None,
        "WRITE_RELU_LOW": low is not None,
        "FINAL": final is not None,
        "STAGES": launch.num_stages,
        "num_warps": launch.num_warps,
    }
    if launch.pair:
        tiles = triton.cdiv(y * xx, launch.block_m)
        grid = (n * ((z + 1) // 2) * tiles,)
        _conv3x3x3_pair_kernel[grid](
            *pointers, Z=z, Y=y, X=xx, TILES=tiles, UNROLL=launch.unroll,
            num_stages=launch.num_stages, **flags,
        )  # fmt: skip
    else:
        grid = (triton.cdiv(total, launch.block_m),)
        _conv3x3x3_kernel[grid](
            *pointers, total, z, y, xx, UNROLL=launch.unroll, num_stages=launch.num_stages,
            **flags,
        )  # fmt: skip
    if final is not None:
        return logits, None
    return out, low


def conv_first(
    inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 3x3x3 convolution of float32 ``inputs`` ``(N, z, y, x, C)`` (few features)
    with float32 ``weight`` from :func:`tap_weight` and ``bias``, in float32 multiply-adds.
    Returns the float32 result ``(N, z, y, x, C')`` and its ReLU in ``dtype``."""
    n, z, y, xx, c_in = inputs.shape
    c_out = weight.shape[2]
    inputs = inputs.contiguous()
    total = _check_size(inputs.shape[:4], max(c_in, c_out))
    out = inputs.new_empty((n, z, y, xx, c_out))
    low = inputs.new_empty((n, z, y, xx, c_out), dtype=dtype)
    block_m = 128
    _conv_first_kernel[(triton.cdiv(total, block_m),)](
        inputs, weight, bias, out, low, total, z, y, xx,
        CIN=c_in, COUT=c_out, BLOCK_M=block_m, num_warps=4,
    )  # fmt: skip
    return out, low


class TritonStack(RelaidConvStack):
    """ConvStack3D's forward (inputs and output ``(N, 1, z, y, x)``) with every 3x3x3
    convolution a fused Triton kernel: the first in float32, the others in ``dtype``."""

    def __init__(
        self,
        model: ConvStack3D,
        dtype: torch.dtype = torch.bfloat16,
        launch: Launch | None = None,
    ) -> None:
        launch = launch or LAUNCH  # fixed now: it decides the weights' layout
        super().__init__(model, lambda k: relaid_weight(k, dtype, launch))
        self.dtype = dtype
        self.launch = launch
        conv0 = model.conv0_a
        self.w0a = torch.nn.Parameter(tap_weight(conv0.weight.detach(), torch.float32), False)
        self.b0a = torch.nn.Parameter(conv0.bias.detach().float().clone(), False)

    def forward(self, image: torch.Tensor, pom_logits: torch.Tensor) -> torch.Tensor:
        k = self.launch
        inputs = torch.cat([image, pom_logits], dim=1).float().permute(0, 2, 3, 4, 1)
        inputs = inputs.contiguous()  # (N, z, y, x, 2)
        _, h = conv_first(inputs, self.w0a, self.b0a, self.dtype)
        x, h = conv3x3x3(h, self.w0b, self.b0b, write_relu_low=True, launch=k)
        last = len(self.wa) - 1
        for i, (wa, ba, wb, bb) in enumerate(zip(self.wa, self.ba, self.wb, self.bb)):
            _, a = conv3x3x3(h, wa, ba, write_f32=False, write_relu_low=True, launch=k)
            if i < last:
                x, h = conv3x3x3(a, wb, bb, residual=x, write_relu_low=True, launch=k)
            else:
                logits, _ = conv3x3x3(
                    a, wb, bb, residual=x, launch=k, final=(self.w_lom, self.b_lom, inputs)
                )
                return logits.unsqueeze(1)
        # depth 1: no residual modules
        lom = torch.relu(x) @ self.w_lom + self.b_lom
        return (inputs[..., 1] + lom).unsqueeze(1)
