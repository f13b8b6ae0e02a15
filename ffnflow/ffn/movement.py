"""FOV movement: the face-max policy of the reference (google/ffn FaceMaxMovementPolicy).

After each forward pass the maximum POM logit on each of the six faces of the cube of
half-size ``deltas`` around the FOV centre is a move candidate when it reaches the move
threshold. Candidates join a FIFO queue (within one update ordered by descending score);
positions are snapped to a lattice of cell size ``deltas`` centred on the seed and each
lattice cell is visited at most once. All coordinates are z, y, x voxels.

Beyond the reference: with ``blocked`` (positions where no FOV may be centred, e.g. an
excluded lost section), a move whose target is blocked goes on along its face's axis to
the first free position less than one more delta away, so an object crosses an excluded
slab thinner than ``deltas`` whatever its lattice (the FOVs still overlap). Without
``blocked`` the policy is the reference's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

import numpy as np


def face_max_moves(
    pom_logits: np.ndarray, deltas_zyx: tuple[int, int, int], threshold_logit: float
) -> list[tuple[float, tuple[int, int, int]]]:
    """Move candidates from the face maxima of a predicted FOV (logits, z, y, x).

    Returns ``(score, offset_zyx)`` pairs, offsets relative to the FOV centre, sorted by
    descending ``(score, offset)`` as the reference does.
    """
    center = np.array(pom_logits.shape) // 2
    sub = [slice(c - d, c + d + 1) for c, d in zip(center, deltas_zyx)]
    found: set[tuple[float, tuple[int, int, int]]] = set()
    for axis, delta in enumerate(deltas_zyx):
        if delta == 0:
            continue
        for offset in (-delta, delta):
            face_sel = list(sub)
            face_sel[axis] = center[axis] + offset
            face = pom_logits[tuple(face_sel)]
            iy, ix = np.unravel_index(int(face.argmax()), face.shape)
            score = face[iy, ix]
            if score < threshold_logit:
                continue
            rel = [int(iy) - face.shape[0] // 2, int(ix) - face.shape[1] // 2]
            rel.insert(axis, offset)
            found.add((float(score), tuple(rel)))
    return sorted(found, reverse=True)


class FaceMaxMovement:
    """The movement queue of one object being flood-filled."""

    def __init__(
        self,
        deltas_zyx: tuple[int, int, int],
        threshold_logit: float,
        blocked: Callable[[tuple[int, int, int]], bool] | None = None,
    ) -> None:
        self.deltas = np.asarray(deltas_zyx, dtype=np.int64)
        self.blocked = blocked
        self.threshold_logit = float(threshold_logit)
        self.queue: deque[tuple[float, tuple[int, int, int]]] = deque()
        self.visited: set[tuple[int, int, int]] = set()
        self.start_zyx = np.zeros(3, dtype=np.int64)
        self._deltas = tuple(int(d) for d in self.deltas)
        self._start = (0, 0, 0)

    def reset(self, start_zyx: tuple[int, int, int]) -> None:
        """Start a new object at ``start_zyx``: the queue holds only the start position."""
        self.queue = deque([(2 * self.threshold_logit, tuple(start_zyx))])
        self.visited = set()
        self.start_zyx = np.asarray(start_zyx, dtype=np.int64)
        self._start = tuple(int(v) for v in start_zyx)

    def lattice_cell(self, pos_zyx: tuple[int, int, int]) -> tuple[int, int, int]:
        """The movement-lattice cell of a position; the seed sits in the middle of its cell."""
        # Plain ints (floor division as numpy's): this runs for every queued position.
        return tuple(
            (int(p) - s + d // 2) // max(d, 1)
            for p, s, d in zip(pos_zyx, self._start, self._deltas)
        )

    def positions(
        self, is_valid: Callable[[tuple[int, int, int]], bool]
    ) -> Iterator[tuple[int, int, int]]:
        """Yield queued positions in order, skipping visited cells and invalid positions."""
        while self.queue:
            _, pos = self.queue.popleft()
            if self.lattice_cell(pos) in self.visited:
                continue
            if is_valid(pos):
                yield pos

    def update(self, pom_logits: np.ndarray, pos_zyx: tuple[int, int, int]) -> None:
        """Record a forward pass at ``pos_zyx`` and queue moves from its face maxima."""
        self.visited.add(self.lattice_cell(pos_zyx))
        for score, rel in face_max_moves(pom_logits, tuple(self.deltas), self.threshold_logit):
            target = tuple(int(r + p) for r, p in zip(rel, pos_zyx))
            if self.blocked is not None and self.blocked(target):
                target = self._past_blocked(target, rel)
            self.queue.append((score, target))

    def _past_blocked(
        self, target: tuple[int, int, int], rel: tuple[int, int, int]
    ) -> tuple[int, int, int]:
        """The first free position beyond a blocked ``target`` along its face's axis, less
        than one delta further; ``target`` itself if there is none."""
        axis = next(a for a, (r, d) in enumerate(zip(rel, self._deltas)) if d and abs(r) == d)
        step = 1 if rel[axis] > 0 else -1
        for k in range(1, self._deltas[axis]):
            moved = list(target)
            moved[axis] += step * k
            if not self.blocked(tuple(moved)):
                return tuple(moved)
        return target
