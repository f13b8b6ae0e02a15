"""The FFN model (convstack_3d), its checkpoints, and the import of google/ffn weights.

A checkpoint is a ``.pt`` file holding a dict with keys ``arch`` (constructor arguments of
:class:`ConvStack3D`), ``state_dict``, ``normalization`` (``image_mean``, ``image_stddev``:
the model sees ``(raw - mean) / stddev``), ``resolution_nm`` (z, y, x voxel size the model
was trained at) and ``provenance`` (free text).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ffnflow.atomic import atomic_output
from ffnflow.checkpoint_io import load_payload, payload_resolution
from ffnflow.errors import InputError

CHECKPOINT_KEYS = ("arch", "state_dict", "normalization")


@dataclass(frozen=True)
class ModelArch:
    """Architecture of a convstack_3d FFN; sizes are voxels, z, y, x."""

    depth: int = 12
    features: int = 32
    fov_size_zyx: tuple[int, int, int] = (33, 33, 33)
    deltas_zyx: tuple[int, int, int] = (8, 8, 8)
    name: str = field(default="convstack_3d")

    def __post_init__(self) -> None:
        if self.name != "convstack_3d":
            raise InputError(f"model arch name {self.name!r}: only 'convstack_3d' is known")
        if self.depth < 1 or self.features < 1:
            raise InputError(f"model arch: depth and features must be >= 1, got {self}")
        if any(s % 2 == 0 for s in self.fov_size_zyx):
            raise InputError(f"model arch: fov_size_zyx must be odd, got {self.fov_size_zyx}")
        object.__setattr__(self, "fov_size_zyx", tuple(int(v) for v in self.fov_size_zyx))
        object.__setattr__(self, "deltas_zyx", tuple(int(v) for v in self.deltas_zyx))

    @property
    def flops_per_fov(self) -> float:
        """Multiply-add FLOPs (2 per MAC) of one forward pass over one FOV."""
        voxels = float(np.prod(self.fov_size_zyx))
        f = self.features
        macs = 27 * 2 * f + 27 * f * f + (self.depth - 1) * 2 * 27 * f * f + f
        return 2.0 * macs * voxels


class ConvStack3D(nn.Module):
    """convstack_3d: a residual stack of 3x3x3 convolutions predicting a POM logit update.

    Input ``image`` and ``pom_logits`` are ``(N, 1, z, y, x)`` float tensors; the output has
    the same shape and is the new POM in logit space, ``pom_logits + net(image, pom_logits)``.
    """

    def __init__(self, arch: ModelArch) -> None:
        super().__init__()
        self.arch = arch
        f = arch.features
        self.conv0_a = nn.Conv3d(2, f, 3, padding=1)
        self.conv0_b = nn.Conv3d(f, f, 3, padding=1)
        self.res_a = nn.ModuleList(nn.Conv3d(f, f, 3, padding=1) for _ in range(arch.depth - 1))
        self.res_b = nn.ModuleList(nn.Conv3d(f, f, 3, padding=1) for _ in range(arch.depth - 1))
        self.conv_lom = nn.Conv3d(f, 1, 1)

    def forward(self, image: torch.Tensor, pom_logits: torch.Tensor) -> torch.Tensor:
        x = torch.cat([image, pom_logits], dim=1)
        x = self.conv0_b(torch.relu(self.conv0_a(x)))
        for conv_a, conv_b in zip(self.res_a, self.res_b):
            x = x + conv_b(torch.relu(conv_a(torch.relu(x))))
        return pom_logits + self.conv_lom(torch.relu(x))


class RelaidConvStack(nn.Module):
    """A ConvStack3D's parameters laid out for another formulation of its forward pass.

    The first convolution stays as it is (``conv0_a``); the 3x3x3 kernels after it become
    ``weight(kernel)`` (``w0b``, ``wa[i]``, ``wb[i]``), their biases float32 (``b0b``,
    ``ba[i]``, ``bb[i]``); the final 1x1x1 convolution becomes a float32 vector and bias
    (``w_lom``, ``b_lom``). Subclasses define ``forward``.
    """

    def __init__(self, model: ConvStack3D, weight: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.conv0_a = model.conv0_a

        def w(conv: nn.Conv3d) -> nn.Parameter:
            return nn.Parameter(weight(conv.weight.detach()), False)

        def b(conv: nn.Conv3d) -> nn.Parameter:
            return nn.Parameter(conv.bias.detach().float().clone(), False)

        self.w0b, self.b0b = w(model.conv0_b), b(model.conv0_b)
        self.wa = nn.ParameterList(w(a) for a in model.res_a)
        self.ba = nn.ParameterList(b(a) for a in model.res_a)
        self.wb = nn.ParameterList(w(c) for c in model.res_b)
        self.bb = nn.ParameterList(b(c) for c in model.res_b)
        lom = model.conv_lom
        self.w_lom = nn.Parameter(lom.weight.detach().float().reshape(-1).clone(), False)
        self.b_lom = nn.Parameter(lom.bias.detach().float().clone(), False)


def tf_variable_names(depth: int) -> dict[str, str]:
    """Map ConvStack3D parameter names to google/ffn TensorFlow variable names."""
    names = {"conv0_a": "conv0_a", "conv0_b": "conv0_b", "conv_lom": "conv_lom"}
    for i in range(1, depth):
        names[f"res_a.{i - 1}"] = f"conv{i}_a"
        names[f"res_b.{i - 1}"] = f"conv{i}_b"
    mapping = {}
    for ours, theirs in names.items():
        mapping[f"{ours}.weight"] = f"seed_update/{theirs}/weights"
        mapping[f"{ours}.bias"] = f"seed_update/{theirs}/biases"
    return mapping


def import_google_npz(npz_path: str | Path) -> tuple[ModelArch, dict[str, torch.Tensor]]:
    """Build the state dict of a convstack_3d from google/ffn weights saved as npz.

    Kernels are stored TensorFlow-style ``[kz, ky, kx, in, out]``; depth and features are
    read from the array names and shapes. The FOV (33^3) and deltas (8^3) are those of the
    published FIB-25 model, since the npz does not record them.
    """
    npz_path = Path(npz_path)
    if not npz_path.is_file():
        raise InputError(f"weights file {npz_path}: not found")
    with np.load(npz_path) as arrays:
        tf_vars = {k: np.asarray(arrays[k]) for k in arrays.files}
    convs = [k for k in tf_vars if k.endswith("_a/weights") and "/conv" in k]
    depth = len(convs)
    if depth < 1 or "seed_update/conv0_a/weights" not in tf_vars:
        raise InputError(f"weights file {npz_path}: no convstack_3d variables (seed_update/...)")
    features = tf_vars["seed_update/conv0_a/weights"].shape[-1]
    arch = ModelArch(depth=depth, features=int(features))
    state = {}
    for ours, theirs in tf_variable_names(depth).items():
        if theirs not in tf_vars:
            raise InputError(f"weights file {npz_path}: missing variable {theirs}")
        value = tf_vars[theirs]
        if value.ndim == 5:
            value = value.transpose(4, 3, 0, 1, 2)  # [kz,ky,kx,in,out] -> [out,in,kz,ky,kx]
        state[ours] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    return arch, state


def save_checkpoint(
    path: str | Path,
    model: ConvStack3D,
    normalization: dict[str, float],
    resolution_nm: tuple[float, float, float],
    provenance: str = "",
    extra: dict[str, Any] | None = None,
) -> None:
    """Write an ffnflow checkpoint atomically."""
    payload = {
        "arch": asdict(model.arch),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "normalization": {k: float(v) for k, v in normalization.items()},
        "resolution_nm": [float(v) for v in resolution_nm],
        "provenance": provenance,
    }
    payload.update(extra or {})
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


@dataclass
class LoadedModel:
    """A model with the metadata of its checkpoint."""

    model: ConvStack3D
    normalization: dict[str, float]
    resolution_nm: tuple[float, float, float] | None
    path: Path


def load_checkpoint(path: str | Path) -> LoadedModel:
    """Load an ffnflow checkpoint (``.pt``) into a ConvStack3D on the CPU, in eval mode."""
    path = Path(path)
    payload = load_payload(path, "FFN checkpoint", CHECKPOINT_KEYS)
    arch_args = dict(payload["arch"])
    arch_args["fov_size_zyx"] = tuple(arch_args["fov_size_zyx"])
    arch_args["deltas_zyx"] = tuple(arch_args["deltas_zyx"])
    model = ConvStack3D(ModelArch(**arch_args))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return LoadedModel(
        model=model,
        normalization=dict(payload["normalization"]),
        resolution_nm=payload_resolution(payload),
        path=path,
    )
