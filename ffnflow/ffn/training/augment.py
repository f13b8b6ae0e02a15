"""Augmentation of a training example: an image box and its labels (z, y, x, same shape).

Geometric changes (reflections on z, y, x; the y/x transpose; misaligned sections) move
image and labels together, so they stay aligned and the centre voxel keeps its object.
Imaging changes alter the image only: intensity gain and offset, a missing section
(flat), a slipped section (one section shifted in y/x).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AugmentOptions:
    """Which augmentations to apply; probabilities per example, sizes in voxels.

    ``intensity``: gain uniform in ``1 +- intensity`` and offset uniform in
    ``+- intensity`` (normalised image units). ``shifted_sections``: the sections on one side
    of a random section boundary (the side without the centre) move by up to ``max_shift``
    in y and x, image and labels (a misaligned stack). ``slipped_section``: one section of
    the image moves, labels do not. ``missing_section``: one section becomes flat.
    """

    reflect: bool = True
    transpose_yx: bool = True
    intensity: float = 0.1
    missing_section: float = 0.05
    slipped_section: float = 0.05
    shifted_sections: float = 0.05
    max_shift: int = 4


def shift_yx(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``a`` (z, y, x) moved by ``dy``, ``dx`` voxels, edges repeated into the gap."""
    m = max(abs(dy), abs(dx))
    if m == 0:
        return a.copy()
    padded = np.pad(a, ((0, 0), (m, m), (m, m)), mode="edge")
    ny, nx = a.shape[1:]
    return padded[:, m - dy : m - dy + ny, m - dx : m - dx + nx]


def _random_shift(rng: np.random.Generator, max_shift: int) -> tuple[int, int]:
    while True:
        dy, dx = (int(v) for v in rng.integers(-max_shift, max_shift + 1, size=2))
        if dy or dx:
            return dy, dx


def augment_example(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, options: AugmentOptions
) -> tuple[np.ndarray, np.ndarray]:
    """Augmented copies of ``image`` (float32, normalised) and ``labels``; the box centre
    keeps its object."""
    if options.reflect:
        flips = [axis for axis in range(3) if rng.random() < 0.5]
        if flips:
            image, labels = np.flip(image, flips), np.flip(labels, flips)
    if options.transpose_yx and image.shape[1] == image.shape[2] and rng.random() < 0.5:
        image, labels = image.transpose(0, 2, 1), labels.transpose(0, 2, 1)
    image = np.array(image, dtype=np.float32)
    labels = np.array(labels)
    nz = image.shape[0]
    cz = nz // 2
    if options.max_shift > 0 and nz > 1 and rng.random() < options.shifted_sections:
        z0 = int(rng.integers(1, nz))  # boundary between sections z0 - 1 and z0
        part = slice(z0, None) if z0 > cz else slice(None, z0)
        dy, dx = _random_shift(rng, options.max_shift)
        image[part] = shift_yx(image[part], dy, dx)
        labels[part] = shift_yx(labels[part], dy, dx)
    if options.max_shift > 0 and rng.random() < options.slipped_section:
        z = int(rng.integers(nz))
        dy, dx = _random_shift(rng, options.max_shift)
        image[z : z + 1] = shift_yx(image[z : z + 1], dy, dx)
    if rng.random() < options.missing_section:
        z = int(rng.integers(nz))
        image[z] = rng.uniform(-2.0, 2.0) + rng.normal(0.0, 0.05, image[z].shape)
    if options.intensity > 0:
        gain = rng.uniform(1 - options.intensity, 1 + options.intensity)
        offset = rng.uniform(-options.intensity, options.intensity)
        image = image * np.float32(gain) + np.float32(offset)
    return image.astype(np.float32, copy=False), labels
