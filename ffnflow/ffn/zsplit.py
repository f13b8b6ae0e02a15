"""The FFN's 3x3x3 convolutions computed as 2D convolutions over (y, x), one per z section.

A 3x3x3 convolution with C input and C' output features equals, for every z section, one
2D 3x3 convolution of that section with 3*C' outputs (one C' group per z tap) followed by
a shifted sum over z: ``out[z] = tap0[z-1] + tap1[z] + tap2[z+1]``. cuDNN's 2D kernels are
far better tuned than its 3D ones for 32 features; the shifted sum is a cheap
memory-bound pass (fused into the neighbouring element-wise work under ``torch.compile``).

The z-stack formulation is the other way round: the three z neighbours of every section
side by side as ``3*C`` input features of one 2D 3x3 convolution with ``C'`` outputs (no
shifted sum; the stacking is fused into the element-wise pass that makes the input).

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


def zstack_weight(weight: torch.Tensor) -> torch.Tensor:
    """A 3D kernel ``(C', C, 3, 3, 3)`` as the 2D kernel ``(C', 3*C, 3, 3)`` (z tap major)."""
    c_out, c_in = weight.shape[:2]
    if tuple(weight.shape[2:]) != (3, 3, 3):
        raise ValueError(f"zstack: kernel {tuple(weight.shape)} is not 3x3x3")
    return weight.permute(0, 2, 1, 3, 4).reshape(c_out, 3 * c_in, 3, 3)


def zstack_conv(x: torch.Tensor, weight2d: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """3x3x3 convolution (zero padding 1) of ``x`` ``(N, z, y, x, C)``; float32 result
    ``(N, z, y, x, C')``. ``weight2d`` from :func:`zstack_weight`, in ``x``'s dtype."""
    n, z, y, xx, c = x.shape
    pad = F.pad(x, (0, 0, 0, 0, 0, 0, 1, 1))  # (N, z + 2, y, x, C)
    stacked = torch.cat([pad[:, :-2], pad[:, 1:-1], pad[:, 2:]], dim=-1)  # (N, z, y, x, 3C)
    x2 = stacked.reshape(n * z, y, xx, 3 * c).permute(0, 3, 1, 2)  # channels_last 2D view
    out = F.conv2d(x2, weight2d, None, padding=1)  # (N*z, C', y, x)
    return out.permute(0, 2, 3, 1).reshape(n, z, y, xx, -1).float() + bias.float()


FORMS = {"split": (zsplit_weight, zsplit_conv), "stack": (zstack_weight, zstack_conv)}


class ZSplitStack(RelaidConvStack):
    """ConvStack3D's forward (inputs and output ``(N, 1, z, y, x)``) with its 3x3x3
    convolutions after the first as 2D convolutions in ``dtype``: z-split (``form``
    ``"split"``) or z-stack (``"stack"``). The residual stream is kept in
    ``residual_dtype`` (float32: the predictor's numerics)."""

    def __init__(
        self,
        model: ConvStack3D,
        dtype: torch.dtype = torch.bfloat16,
        form: str = "split",
        residual_dtype: torch.dtype = torch.float32,
    ) -> None:
        if form not in FORMS:
            raise ValueError(f"ZSplitStack: form {form!r} is not one of {sorted(FORMS)}")
        relay, self._conv = FORMS[form]
        super().__init__(
            model, lambda k: relay(k).to(dtype).contiguous(memory_format=torch.channels_last)
        )
        self.dtype = dtype
        self.form = form
        self.residual_dtype = residual_dtype

    def forward(self, image: torch.Tensor, pom_logits: torch.Tensor) -> torch.Tensor:
        dt, rt, conv = self.dtype, self.residual_dtype, self._conv
        x = torch.cat([image, pom_logits], dim=1).float()
        x = self.conv0_a(x.contiguous(memory_format=torch.channels_last_3d))
        x = x.permute(0, 2, 3, 4, 1)  # (N, z, y, x, C)
        x = conv(torch.relu(x).to(dt), self.w0b, self.b0b).to(rt)
        for wa, ba, wb, bb in zip(self.wa, self.ba, self.wb, self.bb):
            h = conv(torch.relu(x).to(dt), wa, ba)
            x = (x.float() + conv(torch.relu(h).to(dt), wb, bb)).to(rt)
        lom = torch.relu(x.float()) @ self.w_lom + self.b_lom  # (N, z, y, x)
        return pom_logits.float() + lom.unsqueeze(1)
