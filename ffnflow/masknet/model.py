"""The mask network model (a small residual 3D U-Net) and its checkpoints.

The network maps a normalised EM image ``(N, 1, z, y, x)`` to per-voxel logits
``(N, C, z, y, x)``, one channel per class; ``classes`` always starts with ``boundary``
(cell membrane) and ``exclude`` (do not segment here), then optional user classes
(e.g. ``vessel``, ``soma``). It has no normalisation layers, so a voxel's output depends only
on the image within :attr:`MaskNetArch.receptive_radius` voxels: with that much context
and tiles aligned to :attr:`MaskNetArch.alignment`, predictions do not depend on tiling.

A checkpoint is a ``.pt`` file holding ``arch``, ``state_dict``, ``normalization``
(``image_mean``, ``image_stddev``), ``resolution_nm`` (z, y, x), ``classes`` and
``provenance``, like the FFN's (:mod:`ffnflow.ffn.model`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ffnflow.atomic import atomic_output
from ffnflow.checkpoint_io import load_payload, payload_resolution
from ffnflow.errors import InputError

CHECKPOINT_KEYS = ("arch", "state_dict", "normalization")
BASE_CLASSES = ("boundary", "exclude")


@dataclass(frozen=True)
class MaskNetArch:
    """Architecture of the residual U-Net.

    ``features``: channels at full resolution, doubled at every level; ``levels``: number
    of resolutions (``levels - 1`` poolings); ``pool_zyx``: pooling factor per axis (use
    (1, 2, 2) for strongly anisotropic data); ``classes``: output channel names.
    """

    features: int = 8
    levels: int = 3
    pool_zyx: tuple[int, int, int] = (2, 2, 2)
    classes: tuple[str, ...] = BASE_CLASSES
    name: str = field(default="residual_unet_3d")

    def __post_init__(self) -> None:
        object.__setattr__(self, "pool_zyx", tuple(int(v) for v in self.pool_zyx))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        if self.name != "residual_unet_3d":
            raise InputError(f"mask net arch name {self.name!r}: only 'residual_unet_3d' is known")
        if (
            self.features < 1
            or self.levels < 1
            or len(self.pool_zyx) != 3
            or min(self.pool_zyx) < 1
        ):
            raise InputError(f"mask net arch: bad features/levels/pool_zyx in {self}")
        if self.classes[:2] != BASE_CLASSES or len(set(self.classes)) != len(self.classes):
            raise InputError(
                f"mask net classes {list(self.classes)}: must start with {list(BASE_CLASSES)} "
                f"and be unique"
            )

    @property
    def alignment(self) -> tuple[int, int, int]:
        """Tiles must start at multiples of this (voxels, z, y, x): the total pooling."""
        return tuple(p ** (self.levels - 1) for p in self.pool_zyx)

    @property
    def receptive_radius(self) -> tuple[int, int, int]:
        """Voxels (z, y, x) on each side that can influence one output voxel.

        Every level runs two residual blocks of two 3x3x3 convolutions on the way down
        (one at the bottom) and one block on the way up; a 3x3x3 convolution at level ``l``
        reaches ``pool**l`` voxels, a pooling ``pool**l - 1`` more.
        """
        radius = []
        for p in self.pool_zyx:
            r = 0
            for level in range(self.levels):
                step = p**level
                convs = 2 if level == self.levels - 1 else 4  # down block + up block
                r += convs * step
                if level < self.levels - 1:
                    r += step * (p - 1)
            radius.append(r)
        return tuple(radius)


class ResBlock(nn.Module):
    """``relu(x' + conv(relu(conv(x))))`` with ``x'`` = x, or a 1x1x1 projection of x."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv_a = nn.Conv3d(cin, cout, 3, padding=1)
        self.conv_b = nn.Conv3d(cout, cout, 3, padding=1)
        self.skip = nn.Identity() if cin == cout else nn.Conv3d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.skip(x) + self.conv_b(torch.relu(self.conv_a(x))))


class MaskNet(nn.Module):
    """Residual 3D U-Net: image ``(N, 1, z, y, x)`` -> class logits ``(N, C, z, y, x)``.

    Spatial sizes must be multiples of :attr:`MaskNetArch.alignment`.
    """

    def __init__(self, arch: MaskNetArch) -> None:
        super().__init__()
        self.arch = arch
        f = [arch.features * 2**i for i in range(arch.levels)]
        pool = arch.pool_zyx
        self.down = nn.ModuleList(
            ResBlock(1 if i == 0 else f[i - 1], f[i]) for i in range(arch.levels)
        )
        self.pool = nn.MaxPool3d(pool, pool)
        self.upsample = nn.ModuleList(
            nn.ConvTranspose3d(f[i + 1], f[i], pool, pool) for i in range(arch.levels - 1)
        )
        self.up = nn.ModuleList(ResBlock(2 * f[i], f[i]) for i in range(arch.levels - 1))
        self.head = nn.Conv3d(f[0], len(arch.classes), 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        align = self.arch.alignment
        if any(s % a for s, a in zip(image.shape[2:], align)):
            raise InputError(
                f"mask net input {tuple(image.shape)}: z, y, x must be multiples of {align}"
            )
        skips = []
        x = image
        for i, block in enumerate(self.down):
            if i:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        for i in reversed(range(self.arch.levels - 1)):
            x = self.up[i](torch.cat([skips[i], self.upsample[i](x)], dim=1))
        return self.head(x)


@dataclass
class LoadedMaskNet:
    """A mask net with the metadata of its checkpoint."""

    model: MaskNet
    normalization: dict[str, float]
    resolution_nm: tuple[float, float, float] | None
    path: Path
    provenance: str = ""

    @property
    def classes(self) -> tuple[str, ...]:
        return self.model.arch.classes


def save_masknet(
    path: str | Path,
    model: MaskNet,
    normalization: dict[str, float],
    resolution_nm: tuple[float, float, float],
    provenance: str = "",
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a mask net checkpoint atomically (``extra`` keys are added to the dict)."""
    arch = asdict(model.arch)
    arch["pool_zyx"], arch["classes"] = list(arch["pool_zyx"]), list(arch["classes"])
    payload = {
        "arch": arch,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "normalization": {k: float(v) for k, v in normalization.items()},
        "resolution_nm": [float(v) for v in resolution_nm],
        "classes": list(model.arch.classes),
        "provenance": provenance,
    }
    payload.update(extra or {})
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def load_masknet(path: str | Path) -> LoadedMaskNet:
    """Load a mask net checkpoint (``.pt``) on the CPU, in eval mode."""
    path = Path(path)
    payload = load_payload(path, "mask net checkpoint", CHECKPOINT_KEYS, " (masknet.checkpoint)")
    try:
        model = MaskNet(MaskNetArch(**payload["arch"]))
        model.load_state_dict(payload["state_dict"])
    except (TypeError, RuntimeError) as exc:
        raise InputError(f"mask net checkpoint {path}: not a mask net ({exc})") from exc
    model.eval()
    return LoadedMaskNet(
        model=model,
        normalization=dict(payload["normalization"]),
        resolution_nm=payload_resolution(payload),
        path=path,
        provenance=str(payload.get("provenance", "")),
    )
