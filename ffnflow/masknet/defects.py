"""Synthetic imaging defects, injected into real EM to teach the mask net what to exclude.

Each kind models a defect that flood filling handles badly; each returns where it changed
the image (the ``exclude`` target). Images are float32 raw intensities (0..255), z, y, x,
with z the sectioning axis.

- ``blank_section``: one or two sections replaced by a flat grey level (lost section).
- ``dark_section``: one or two sections darkened with their contrast crushed.
- ``shifted_sections``: sections from some z on (a step) or a slab of 1-3 sections shifted
  in y/x by 3-12 voxels; the sections on both sides of each jump are excluded.
- ``saturated_patch``: an ellipsoid where the detector saturates (bright, clipped at 255).
- ``burned_patch``: an ellipsoid of beam damage (dark, blurred, low contrast).
- ``zero_padding``: zeros beyond a ragged volume edge (as in aligned, padded stacks).
- ``knife_chatter``: 1-4 sections with periodic stripes parallel to y or x.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ffnflow.errors import InputError

DEFECT_KINDS = (
    "blank_section",
    "dark_section",
    "shifted_sections",
    "saturated_patch",
    "burned_patch",
    "zero_padding",
    "knife_chatter",
)


@dataclass
class Defected:
    """An image with defects: ``image`` (float32), ``exclude`` (bool), ``kinds`` (uint8:
    0 = clean, i + 1 = ``DEFECT_KINDS[i]``; later defects overwrite earlier ones) and
    ``labels`` moved with the image (None when none were given)."""

    image: np.ndarray
    exclude: np.ndarray
    kinds: np.ndarray
    labels: np.ndarray | None


def _sections(rng: np.random.Generator, nz: int, max_thick: int) -> slice:
    thick = int(rng.integers(1, max_thick + 1))
    z0 = int(rng.integers(0, max(nz - thick, 0) + 1))
    return slice(z0, min(z0 + thick, nz))


def _ellipsoid(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """A random ellipsoid (bool) with a wobbly surface, centred inside the array."""
    centre = [rng.uniform(0.2 * s, 0.8 * s) for s in shape]
    radii = [rng.uniform(2, 7), rng.uniform(6, 20), rng.uniform(6, 20)]
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    r2 = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii))
    wobble = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), 3)
    wobble *= 0.25 / (wobble.std() + 1e-6)
    return r2 + wobble < 1.0


def blank_section(image, rng, labels=None):
    sel = _sections(rng, image.shape[0], 2)
    image[sel] = rng.uniform(20, 250) + rng.normal(0, 2, image[sel].shape)
    mask = np.zeros(image.shape, bool)
    mask[sel] = True
    return mask


def dark_section(image, rng, labels=None):
    sel = _sections(rng, image.shape[0], 2)
    image[sel] = image[sel] * rng.uniform(0.05, 0.35) + rng.uniform(0, 15)
    mask = np.zeros(image.shape, bool)
    mask[sel] = True
    return mask


def shifted_sections(image, rng, labels=None):
    nz = image.shape[0]
    z0 = int(rng.integers(1, nz))
    z1 = nz if rng.random() < 0.5 else min(nz, z0 + int(rng.integers(1, 4)))
    shift = np.zeros(2, int)
    while np.abs(shift).max() < 3:
        shift = rng.integers(-12, 13, size=2)
    image[z0:z1] = np.roll(image[z0:z1], tuple(shift), axis=(1, 2))
    if labels is not None:
        labels[z0:z1] = np.roll(labels[z0:z1], tuple(shift), axis=(1, 2))
    mask = np.zeros(image.shape, bool)
    for jump in (z0, z1):  # a jump lies between sections jump - 1 and jump
        if 0 < jump < nz:
            mask[jump - 1 : jump + 1] = True
    return mask


def saturated_patch(image, rng, labels=None):
    mask = _ellipsoid(rng, image.shape)
    bright = image * rng.uniform(1.5, 3.0) + rng.uniform(80, 160)
    image[mask] = np.minimum(bright[mask], 255.0)
    return mask


def burned_patch(image, rng, labels=None):
    mask = _ellipsoid(rng, image.shape)
    blurred = ndimage.gaussian_filter(image, 1.5)
    image[mask] = blurred[mask] * rng.uniform(0.1, 0.35) + rng.uniform(0, 40)
    return mask


def zero_padding(image, rng, labels=None):
    nz = image.shape[0]
    axis = int(rng.integers(0, 3))
    side = int(rng.integers(0, 2))
    mask = np.zeros(image.shape, bool)
    if axis == 0:  # whole sections beyond the first or last one
        depth = int(rng.integers(2, max(3, nz // 4)))
        sel = slice(0, depth) if side == 0 else slice(nz - depth, nz)
        mask[sel] = True
    else:  # a ragged edge in y or x that wanders from section to section
        n = image.shape[axis]
        depth = rng.uniform(3, max(4, n // 3)) + np.cumsum(rng.integers(-1, 2, nz))
        depth = np.clip(depth, 1, n - 1).astype(int)
        coord = np.arange(n)
        for z in range(nz):
            beyond = coord < depth[z] if side == 0 else coord >= n - depth[z]
            if axis == 1:
                mask[z, beyond, :] = True
            else:
                mask[z, :, beyond] = True
    image[mask] = 0.0
    return mask


def knife_chatter(image, rng, labels=None):
    sel = _sections(rng, image.shape[0], 4)
    wavelength = rng.uniform(3, 10)
    amplitude = rng.uniform(0.25, 0.5)
    angle = rng.uniform(-0.2, 0.2) + (np.pi / 2 if rng.random() < 0.5 else 0.0)
    _, y, x = np.ogrid[0:1, 0 : image.shape[1], 0 : image.shape[2]]
    phase = 2 * np.pi * (np.cos(angle) * y + np.sin(angle) * x) / wavelength + rng.uniform(0, 6.3)
    image[sel] = np.clip(image[sel] * (1 + amplitude * np.sin(phase)), 0, 255)
    mask = np.zeros(image.shape, bool)
    mask[sel] = True
    return mask


_INJECTORS = {
    "blank_section": blank_section,
    "dark_section": dark_section,
    "shifted_sections": shifted_sections,
    "saturated_patch": saturated_patch,
    "burned_patch": burned_patch,
    "zero_padding": zero_padding,
    "knife_chatter": knife_chatter,
}


def inject_defects(
    image: np.ndarray,
    rng: np.random.Generator,
    kinds: Sequence[str],
    labels: np.ndarray | None = None,
) -> Defected:
    """Inject the named defects into a copy of ``image`` (raw units, z, y, x).

    ``labels``, when given, are shifted with the image (copied). Shifts are applied first,
    then the other kinds in the order given.
    """
    unknown = [k for k in kinds if k not in _INJECTORS]
    if unknown:
        raise InputError(f"defect kinds {unknown}: choose from {list(DEFECT_KINDS)}")
    out = np.array(image, dtype=np.float32, copy=True)
    moved = None if labels is None else np.array(labels, copy=True)
    exclude = np.zeros(out.shape, bool)
    kind_map = np.zeros(out.shape, np.uint8)
    # A shift moves the image, so it goes first: earlier defects would move off their masks.
    for kind in sorted(kinds, key=lambda k: k != "shifted_sections"):
        mask = _INJECTORS[kind](out, rng, moved)
        exclude |= mask
        kind_map[mask] = DEFECT_KINDS.index(kind) + 1
    return Defected(out, exclude, kind_map, moved)


def random_defects(
    image: np.ndarray,
    rng: np.random.Generator,
    probability: float = 0.75,
    max_defects: int = 2,
    kinds: Sequence[str] = DEFECT_KINDS,
    labels: np.ndarray | None = None,
    kind_probabilities: Sequence[float] | None = None,
) -> Defected:
    """With ``probability``, 1..``max_defects`` defects of random kinds (uniform over
    ``kinds``, or drawn with ``kind_probabilities``); else none."""
    chosen: list[str] = []
    if rng.random() < probability:
        count = int(rng.integers(1, max_defects + 1))
        chosen = [str(k) for k in rng.choice(list(kinds), size=count, p=kind_probabilities)]
    return inject_defects(image, rng, chosen, labels)
