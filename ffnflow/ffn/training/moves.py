"""The FOV movement policy of training (google/ffn ``train.py`` ``fixed_offsets``).

Within one example the FOV starts at the centre, then tries the 26 shifts by +-delta
(each axis -delta, 0 or +delta, not all 0), in a shuffled order, and moves to a shift
only when the POM there, as the earlier FOVs of this example predicted it, reaches the
move threshold. Offsets are z, y, x voxels relative to the example's centre.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

Offset = tuple[int, int, int]


def fov_shifts(deltas_zyx: Sequence[int]) -> list[Offset]:
    """The 26 (fewer where a delta is 0) shifts by -delta, 0, +delta per axis, without (0, 0, 0)."""
    axes = [sorted({-int(d), 0, int(d)}) for d in deltas_zyx]
    return [o for o in itertools.product(*axes) if any(o)]


def example_offsets(deltas_zyx: Sequence[int], rng: np.random.Generator | None) -> list[Offset]:
    """The offsets one example tries, in order: the centre, then the shifts (shuffled with
    ``rng``; in a fixed order when ``rng`` is None)."""
    shifts = fov_shifts(deltas_zyx)
    if rng is not None:
        shifts = [shifts[i] for i in rng.permutation(len(shifts))]
    return [(0, 0, 0), *shifts]


def next_move(
    remaining: list[Offset], pom_logit_at: dict[Offset, float], move_logit: float
) -> Offset | None:
    """Pop offsets from the front of ``remaining`` until one whose POM logit (``pom_logit_at``)
    reaches ``move_logit``; that one, or None when none is left."""
    while remaining:
        offset = remaining.pop(0)
        if pom_logit_at[offset] >= move_logit:
            return offset
    return None
