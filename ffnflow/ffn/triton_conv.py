"""The FFN's 3x3x3 convolutions as one fused Triton kernel each (CUDA; needs Triton).

The z-split formulation (:mod:`ffnflow.ffn.zsplit`) writes a 3x wider tap tensor and reads
it back, and the float32 residual stream costs extra element-wise passes: together about
40 % of the model's time on an H200. Here one kernel computes a whole 3x3x3 convolution as
an implicit GEMM over the 27 taps (each tap a ``(BLOCK_M, C) @ (C, C')`` product of
contiguous channels-last rows, zero outside the volume) and does the rest in its
epilogue: bias, the residual addition into the float32 stream, and the ReLU and cast that
feed the next convolution. A residual block is then two kernels and about 512 bytes of
memory traffic per voxel.

Activations are ``(N, z, y, x, C)`` tensors (channels last). :class:`TritonStack` is
:class:`~ffnflow.ffn.model.ConvStack3D`'s forward pass with the predictor's mixed
precision (first convolution, residual stream, final 1x1x1 convolution and the addition
of the input logits in float32; the inner convolutions' operands in ``dtype``).
Correctness is tested under Triton's interpreter on the CPU (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ffnflow.ffn.model import ConvStack3D, RelaidConvStack


@triton.jit
def _conv3x3x3_kernel(
    x_ptr,  # (N, Z, Y, X, CIN) activations, dtype of the weights
    w_ptr,  # (27, CIN, COUT), tap (dz, dy, dx) major
    b_ptr,  # (COUT,) float32
    res_ptr,  # (N, Z, Y, X, COUT) float32, added when HAS_RES (may be out_ptr)
    out_ptr,  # (N, Z, Y, X, COUT) float32, written when WRITE_F32
    low_ptr,  # (N, Z, Y, X, COUT) dtype of x, relu(result), written when WRITE_RELU_LOW
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
):
    pid = tl.program_id(0)
    offs_m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < total
    xx = offs_m % X
    rest = offs_m // X
    yy = rest % Y
    zz = (rest // Y) % Z
    offs_c = tl.arange(0, CIN)
    offs_o = tl.arange(0, COUT)
    acc = tl.zeros((BLOCK_M, COUT), dtype=tl.float32)
    for tap in tl.static_range(27):
        dz = tap // 9 - 1
        dy = (tap // 3) % 3 - 1
        dx = tap % 3 - 1
        ok = m_ok & (zz + dz >= 0) & (zz + dz < Z) & (yy + dy >= 0) & (yy + dy < Y)
        ok = ok & (xx + dx >= 0) & (xx + dx < X)
        src = offs_m + (dz * Y + dy) * X + dx  # the same FOV: (z, y, x) shifted
        a = tl.load(x_ptr + src[:, None] * CIN + offs_c[None, :], mask=ok[:, None], other=0.0)
        w = tl.load(w_ptr + tap * CIN * COUT + offs_c[:, None] * COUT + offs_o[None, :])
        acc += tl.dot(a, w)
    acc += tl.load(b_ptr + offs_o)[None, :]
    rows = offs_m[:, None] * COUT + offs_o[None, :]
    if HAS_RES:
        acc += tl.load(res_ptr + rows, mask=m_ok[:, None], other=0.0)
    if WRITE_F32:
        tl.store(out_ptr + rows, acc, mask=m_ok[:, None])
    if WRITE_RELU_LOW:
        relu = tl.maximum(acc, 0.0)
        tl.store(low_ptr + rows, relu.to(low_ptr.dtype.element_ty), mask=m_ok[:, None])


def tap_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A 3D kernel ``(C', C, 3, 3, 3)`` as ``(27, C, C')`` (tap dz, dy, dx major)."""
    if tuple(weight.shape[2:]) != (3, 3, 3):
        raise ValueError(f"triton conv: kernel {tuple(weight.shape)} is not 3x3x3")
    c_out, c_in = weight.shape[:2]
    return weight.permute(2, 3, 4, 1, 0).reshape(27, c_in, c_out).to(dtype).contiguous()


def conv3x3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    residual: torch.Tensor | None = None,
    write_f32: bool = True,
    write_relu_low: bool = False,
    block_m: int = 128,
    num_warps: int = 4,
    num_stages: int = 3,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """3x3x3 convolution (zero padding 1) of ``x`` ``(N, z, y, x, C)`` with ``weight`` from
    :func:`tap_weight` and float32 ``bias``, plus ``residual`` (float32; may be updated in
    place: pass the same tensor as the result). Returns the float32 result (or None) and
    its ReLU in ``x``'s dtype (or None)."""
    n, z, y, xx, c_in = x.shape
    c_out = weight.shape[2]
    x = x.contiguous()
    total = n * z * y * xx
    if total * max(c_in, c_out) >= 2**31:  # the kernel's offsets are 32-bit
        raise ValueError(f"triton conv: {n} FOVs of {(z, y, xx)} are too many for one call")
    out = None
    if write_f32:
        out = (
            residual
            if residual is not None
            else x.new_empty((n, z, y, xx, c_out), dtype=torch.float32)
        )
    low = x.new_empty((n, z, y, xx, c_out)) if write_relu_low else None
    dummy = bias
    grid = (triton.cdiv(total, block_m),)
    _conv3x3x3_kernel[grid](
        x,
        weight,
        bias,
        residual if residual is not None else dummy,
        out if out is not None else dummy,
        low if low is not None else x,
        total,
        z,
        y,
        xx,
        CIN=c_in,
        COUT=c_out,
        BLOCK_M=block_m,
        HAS_RES=residual is not None,
        WRITE_F32=write_f32,
        WRITE_RELU_LOW=write_relu_low,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out, low


class TritonStack(RelaidConvStack):
    """ConvStack3D's forward (inputs and output ``(N, 1, z, y, x)``) with the 3x3x3
    convolutions after the first as fused Triton kernels in ``dtype``."""

    def __init__(
        self,
        model: ConvStack3D,
        dtype: torch.dtype = torch.bfloat16,
        block_m: int = 128,
        num_warps: int = 4,
        num_stages: int = 3,
    ) -> None:
        super().__init__(model, lambda k: tap_weight(k, dtype))
        self.dtype = dtype
        self.launch = {"block_m": block_m, "num_warps": num_warps, "num_stages": num_stages}

    def forward(self, image: torch.Tensor, pom_logits: torch.Tensor) -> torch.Tensor:
        k = self.launch
        x = torch.cat([image, pom_logits], dim=1).float()
        x = self.conv0_a(x.contiguous(memory_format=torch.channels_last_3d))
        h = torch.relu(x).permute(0, 2, 3, 4, 1).to(self.dtype).contiguous()  # (N, z, y, x, C)
        x, h = conv3x3x3(h, self.w0b, self.b0b, write_relu_low=True, **k)
        for wa, ba, wb, bb in zip(self.wa, self.ba, self.wb, self.bb):
            _, a = conv3x3x3(h, wa, ba, write_f32=False, write_relu_low=True, **k)
            x, h = conv3x3x3(a, wb, bb, residual=x, write_relu_low=True, **k)
        lom = torch.relu(x) @ self.w_lom + self.b_lom  # (N, z, y, x), float32
        return pom_logits.float() + lom.unsqueeze(1)
