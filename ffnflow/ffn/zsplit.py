"""The FFN's 3x3x3 convolutions computed as 2D convolutions over (y, x), one per z section.

A 3x3x3 convolution with C input and C' output features equals, for every z section, one
2D 3x3 convolution of that section with 3*C' outputs (one C' group per z tap) followed by
a shifted sum over z: ``out[z] = tap0[z-1] + tap1[z] + tap2[z+1]``. cuDNN's 2D kernels are
far better tuned than its 3D ones for 32 features; the shifted sum is a cheap
memory-bound pass (fused into the neighbouring element-wise work under ``torch.compile``).

The other way round, the three z neighbours of every section side by side as ``3*C`` input
features of one 2D convolution with ``C'`` outputs ("z-stack"), ran the model 1.4x slower
on an H200: cuDNN's 2D kernel with 96 inputs and 32 outputs reaches 227 TFLOP/s, the
z-split one 356 (``benchmarks/results/ffn_forward_variants_zstack_h200.log``; commit
fb4c81d, since removed).

Activations are kept as ``(N, z, y, x, C)`` tensors (channels last) throughout.
:class:`ZSplitStack` is :class:`~ffnflow.ffn.model.ConvStack3D`'s forward pass with the
numerics of the predictor's mixed precision (first convolution, residual stream, final
1x1x1 convolution and the addition of the input logits in float32; the other
convolutions in ``dtype``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ffnflow.ffn.model import ConvStack3D, RelaidConvStack


def zsplit_weight(weight: torch.Tensor) -> torch.Tensor:
    """A 3D kernel ``(C', C, 3, 3, 3)`` as the 2D kernel ``(3*C', C, 3, 3)`` (z tap major)."""
    c_out, c_in = weight.shape[:2]
    if tuple(weight.shape[2:]) != (3, 3, 3):
        raise ValueError(f"zsplit: kernel {tuple(weight.shape)} is not 3x3x3")
    return weight.permute(2, 0, 1, 3, 4).reshape(3 * c_out, c_in, 3, 3)


def zsplit_conv(x: torch.Tensor, weight2d: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """3x3x3 convolution (zero padding 1) of ``x`` ``(N, z, y, x, C)``; float32 result
    ``(N, z, y, x, C')``. ``weight2d`` from :func:`zsplit_weight`, in ``x``'s dtype."""
    n, z, y, xx, c = x.shape
    c_out = weight2d.shape[0] // 3
    x2 = x.reshape(n * z, y, xx, c).permute(0, 3, 1, 2)  # a channels_last 2D view
    taps = F.conv2d(x2, weight2d, None, padding=1)  # (N*z, 3C', y, x)
    taps = taps.permute(0, 2, 3, 1).reshape(n, z, y, xx, 3, c_out)
    out = taps[..., 1, :].float() + bias.float()
    out[:, 1:] += taps[:, :-1, ..., 0, :]
    out[:, :-1] += taps[:, 1:, ..., 2, :]
    return out


class ZSplitStack(RelaidConvStack):
    """ConvStack3D's forward (inputs and output ``(N, 1, z, y, x)``) with its 3x3x3
    convolutions after the first as z-split 2D convolutions in ``dtype``. The residual
    stream is kept in ``residual_dtype`` (float32: the predictor's numerics)."""

    def __init__(
        self,
        model: ConvStack3D,
        dtype: torch.dtype = torch.bfloat16,
        residual_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(
            model,
            lambda k: zsplit_weight(k).to(dtype).contiguous(memory_format=torch.channels_last),
        )
        self.dtype = dtype
        self.residual_dtype = residual_dtype

    def forward(self, image: torch.Tensor, pom_logits: torch.Tensor) -> torch.Tensor:
        dt, rt = self.dtype, self.residual_dtype
        x = torch.cat([image, pom_logits], dim=1).float()
        x = self.conv0_a(x.contiguous(memory_format=torch.channels_last_3d))
        x = x.permute(0, 2, 3, 4, 1)  # (N, z, y, x, C)
        x = zsplit_conv(torch.relu(x).to(dt), self.w0b, self.b0b).to(rt)
        for wa, ba, wb, bb in zip(self.wa, self.ba, self.wb, self.bb):
            h = zsplit_conv(torch.relu(x).to(dt), wa, ba)
            x = (x.float() + zsplit_conv(torch.relu(h).to(dt), wb, bb)).to(rt)
        lom = torch.relu(x.float()) @ self.w_lom + self.b_lom  # (N, z, y, x)
        return pom_logits.float() + lom.unsqueeze(1)
