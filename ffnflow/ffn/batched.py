"""Batched flood filling: several objects advance together, one forward pass per step.

:class:`BatchedCanvas` produces exactly what the sequential :class:`~ffnflow.ffn.canvas.Canvas`
produces from the same seeds (labels voxel for voxel, segment ids, origins and the
reference counters), while filling up to ``max_objects`` objects at once so that their
FOVs share one batched forward pass (what makes a GPU busy).

How it works. Seeds are taken in order into a *window*: while fewer than ``max_objects``
of its objects may advance now and fewer than ``lookahead`` are *running* (its FOV moves)
or *done* (its fill ended; it waits for its turn), the next seed joins; the others are
*doomed* (the seed may not start: no work, no memory). Each step, up to ``max_objects``
running objects (in seed order) pop their next valid FOV position exactly as the
sequential canvas would, and all these FOVs are evaluated in one ``predictor.predict``
call. Objects are *retired* strictly in seed
order: only the head of the window, once it is not running, is retired, and retiring
(the seed checks, then accepting or rejecting the object and committing its segment)
happens against the committed state that the sequential canvas has at that seed.

Why the result is the sequential one. An object's fill reads three things: its own POM,
which it owns (per-object POM over a growing box, :class:`LocalPom`; its own movement
queue and visited lattice cells); the constant image and masks; and the committed
segmentation, in exactly two places: (a) the seed checks before it starts
(:meth:`CanvasBase.seed_rejection`) and (b) ``segmentation[pos] <= 0`` for every position
its movement queue offers that passed the POM and context checks. In the sequential
order, these reads happen after all earlier objects were retired; here, while earlier
objects may still be in the window. The segmentation and the set of rejected seeds only
grow, hence:

1. A seed refused now is refused at its turn too. Such an object is admitted *doomed*
   and does nothing; its counters are decided at its turn (the reason may differ then).
2. A read ``segmentation[pos] > 0`` (position refused) stays true. A read
   ``segmentation[pos] == 0`` (position accepted) stays true unless an earlier object
   commits a voxel at ``pos``. Each object records the positions it accepted.
3. After every retirement, every later object in the window is checked: if its seed is
   now refused it becomes doomed (``objects_cancelled``); else if the segmentation is
   non-zero at any position it accepted, it restarts from its seed with a fresh POM and
   queue (``objects_restarted``). Everything else it did is what the sequential canvas
   would have done with the current state.

By induction over retirements, when an object reaches the head of the window all its
reads agree with the sequential state at its seed; retiring it there makes the same
decisions and commits the same voxels. Its forward passes see the same inputs as the
sequential ones, so the results are identical provided the predictor is deterministic
and its output for a FOV does not depend on the other FOVs of its batch: true of the oracle stubs in the tests,
and of :class:`~ffnflow.ffn.predictor.FovPredictor` with ``fixed_batch`` set (on the CPU
``fixed_batch=1``, which loses no speed; in float32 oneDNN's batch-1 and batch-N
convolutions differ in the last bits). The scheduling is a deterministic function of
the seeds and the predictions, so runs repeat exactly with a deterministic predictor.

Scheduling: a later object whose seed an earlier object in the window already claims
(POM >= segment threshold there) waits instead of moving, since it will most likely be
cancelled; when work is done never changes the result. After a retirement only what it
changed is re-checked (the retired seed; the box of the voxels it committed).

Parallelism. One volume offers little: an object's FOVs follow one another, and most
seeds lie in objects that earlier seeds fill, so on FIB-25 (160x250x250) a window of 64
averages 3-8 FOVs per step. :func:`segment_canvases` therefore fills several canvases
(the blocks of a volume, each with its own seeds and window) together, one forward pass
per step for all their FOVs (64 blocks: about 75 FOVs per call); each canvas's result
is its own ``segment_all``'s.

Memory: at most ``lookahead`` POM boxes (running or done objects) exist at a time; a
box covers the FOVs its object visited, so it can become large for a large object.

Counters: those of :data:`~ffnflow.ffn.canvas.COUNTER_NAMES` equal the sequential
canvas's (``fov_evaluations`` counts the forward passes of the kept schedule); in
addition ``fov_evaluations_total`` (all forward passes run), ``fov_evaluations_discarded``
(of restarted or cancelled fills), ``objects_restarted``, ``objects_cancelled``,
``forward_batches`` (predictor calls), ``max_objects``, ``lookahead`` and ``wall_s``.
Arrays are z, y, x; positions are voxel indices into the canvas.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from tqdm import tqdm

from ffnflow.errors import InputError
from ffnflow.ffn.canvas import (
    CanvasBase,
    InferenceOptions,
    SegmentationResult,
    Zyx,
    fov_input,
    merge_prediction,
)
from ffnflow.ffn.movement import FaceMaxMovement
from ffnflow.ffn.predictor import FovPredictor

BATCHED_COUNTER_NAMES = (
    "fov_evaluations_total",
    "fov_evaluations_discarded",
    "objects_restarted",
    "objects_cancelled",
    "forward_batches",
)

Slices = tuple[slice, slice, slice]
FovBatch = tuple[list[np.ndarray], list[np.ndarray]]  # image, POM logits: (z, y, x) per FOV


class LocalPom:
    """The POM logits of one object over a box of the canvas that grows as it is written.

    Voxels never written read as NaN ("not predicted yet"), as in the sequential canvas's
    full-volume POM. Slices are canvas coordinates (z, y, x) inside ``canvas_shape``. The
    box grows by at least ``slack`` voxels per side that needs growing (clipped to the
    canvas) and by half its extent when that is more, so that a moving FOV does not
    reallocate it at every step.
    """

    def __init__(self, canvas_shape: Zyx, start: Zyx, value: float, slack: np.ndarray) -> None:
        self.canvas_shape = np.asarray(canvas_shape, dtype=np.int64)
        self.slack = np.asarray(slack, dtype=np.int64)
        self._set_box(np.asarray(start, dtype=np.int64), np.asarray(start, dtype=np.int64) + 1)
        self.data = np.full((1, 1, 1), value, dtype=np.float32)

    def _set_box(self, lo: np.ndarray, hi: np.ndarray) -> None:
        self.lo, self.hi = lo, hi
        # Plain ints as well: get() runs for every candidate position.
        self._z0, self._y0, self._x0 = (int(v) for v in lo)
        self._z1, self._y1, self._x1 = (int(v) for v in hi)

    def get(self, pos: Zyx) -> np.float32:
        """The logit at one voxel (NaN if never written)."""
        z, y, x = pos
        if self._z0 <= z < self._z1 and self._y0 <= y < self._y1 and self._x0 <= x < self._x1:
            return self.data[z - self._z0, y - self._y0, x - self._x0]
        return np.float32(np.nan)

    def read(self, sel: Slices) -> np.ndarray:
        """A copy of the logits over ``sel`` (NaN where never written)."""
        lo = np.array([s.start for s in sel])
        hi = np.array([s.stop for s in sel])
        if np.all(lo >= self.lo) and np.all(hi <= self.hi):  # the usual case
            return self.data[tuple(slice(i, j) for i, j in zip(lo - self.lo, hi - self.lo))].copy()
        out = np.full(tuple(hi - lo), np.nan, dtype=np.float32)
        a = np.maximum(lo, self.lo)
        b = np.minimum(hi, self.hi)
        if np.all(b > a):
            out[tuple(slice(i, j) for i, j in zip(a - lo, b - lo))] = self.data[
                tuple(slice(i, j) for i, j in zip(a - self.lo, b - self.lo))
            ]
        return out

    def write(self, sel: Slices, values: np.ndarray) -> None:
        """Overwrite the logits over ``sel``."""
        lo = np.array([s.start for s in sel])
        hi = np.array([s.stop for s in sel])
        if np.any(lo < self.lo) or np.any(hi > self.hi):
            # Grow by half the current extent at least: amortised O(1) copies per write.
            slack = np.maximum(self.slack, (self.hi - self.lo) // 2)
            new_lo = np.where(lo < self.lo, np.maximum(lo - slack, 0), self.lo)
            new_hi = np.where(hi > self.hi, np.minimum(hi + slack, self.canvas_shape), self.hi)
            new_lo = np.minimum(new_lo, lo)
            new_hi = np.maximum(new_hi, hi)
            data = np.full(tuple(new_hi - new_lo), np.nan, dtype=np.float32)
            data[tuple(slice(i, j) for i, j in zip(self.lo - new_lo, self.hi - new_lo))] = self.data
            self._set_box(new_lo, new_hi)
            self.data = data
        self.data[tuple(slice(i, j) for i, j in zip(lo - self.lo, hi - self.lo))] = values


@dataclass
class _Fill:
    """One object in the window (see the module docstring for the states)."""

    order: int
    start: Zyx
    state: str = "doomed"  # "running", "done", "doomed", then "retired"
    pom: LocalPom | None = None
    movement: FaceMaxMovement | None = None
    positions: Iterator[Zyx] | None = None
    min_pos: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.int64))
    max_pos: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=np.int64))
    iterations: int = 0
    accepted: list[Zyx] = field(default_factory=list)  # positions read as unsegmented
    claimed_by: _Fill | None = None  # an earlier fill whose POM covers this seed (it waits)

    def drop(self) -> None:
        """Forget the fill's state (POM, queue)."""
        self.pom = self.movement = self.positions = None
        self.accepted = []


class BatchedCanvas(CanvasBase):
    """Flood-fills up to ``max_objects`` objects at a time; the result is :class:`Canvas`'s.

    Arguments as :class:`~ffnflow.ffn.canvas.Canvas`, plus ``max_objects`` (>= 1): the
    most objects filled (or finished and waiting for their turn) at once, hence the
    largest batch passed to ``predictor.predict``. See the module docstring for the
    semantics and for what the predictor must guarantee.
    """

    def __init__(
        self,
        image: np.ndarray,
        predictor: FovPredictor,
        options: InferenceOptions,
        movement_mask: np.ndarray | None = None,
        seed_mask: np.ndarray | None = None,
        max_objects: int = 8,
        lookahead: int | None = None,
    ) -> None:
        if int(max_objects) < 1:
            raise InputError(f"ffn.max_objects: {max_objects} < 1")
        lookahead = 4 * int(max_objects) if lookahead is None else int(lookahead)
        if lookahead < int(max_objects):
            raise InputError(f"ffn.lookahead: {lookahead} < max_objects {max_objects}")
        super().__init__(image, predictor, options, movement_mask, seed_mask)
        self.max_objects = int(max_objects)
        self.lookahead = lookahead
        for name in BATCHED_COUNTER_NAMES:
            self.counters[name] = 0
        self.counters["max_objects"] = self.max_objects
        self.counters["lookahead"] = self.lookahead

    # -- one object ------------------------------------------------------------------------
    def _start(self, fill: _Fill) -> None:
        """(Re)start the fill of ``fill`` at its seed with a fresh POM and movement queue."""
        fill.drop()
        fill.state = "running"
        # Slack of two movement steps: a box of (FOV + 4 deltas)^3 at the first write (a
        # box of 3 FOVs per side costs more to allocate than the forward pass it follows).
        fill.pom = LocalPom(
            self.shape, fill.start, self.init_logit, 2 * np.asarray(self.predictor.deltas_zyx)
        )
        fill.movement = FaceMaxMovement(
            self.predictor.deltas_zyx, self.move_logit, self._blocked_for_movement()
        )
        fill.movement.reset(fill.start)
        fill.positions = fill.movement.positions(partial(self._is_valid_move, fill))
        fill.min_pos = np.array(fill.start)
        fill.max_pos = np.array(fill.start)
        fill.iterations = 0
        fill.claimed_by = None

    def _is_valid_move(self, fill: _Fill, pos: Zyx) -> bool:
        # Canvas._is_valid_move, on the object's own POM, recording segmentation reads of 0.
        if fill.pom.get(pos) < self.move_logit:  # NaN (never predicted) passes
            return False
        if not self.has_context(pos) or self.segmentation[pos] > 0:
            return False
        fill.accepted.append(pos)
        return True

    def _next_position(self, fill: _Fill) -> Zyx | None:
        """The next FOV centre of ``fill`` (as in ``Canvas.segment_at``), None when it ends."""
        for pos in fill.positions:
            if fill.pom.get(fill.start) < self.move_logit:
                return None  # the seed itself got too weak
            if self.movement_mask is not None and self.movement_mask[pos]:
                continue
            return pos
        return None

    # -- one step of all running objects ---------------------------------------------------
    def _gather(self, running: list[_Fill]) -> list[tuple[_Fill, Zyx, Slices, np.ndarray]]:
        """The next FOV of every running object (objects whose fill ended become done)."""
        batch: list[tuple[_Fill, Zyx, Slices, np.ndarray]] = []
        for fill in running:
            pos = self._next_position(fill)
            if pos is None:
                fill.state = "done"
                fill.positions = None
                continue
            sel = self._fov_slices(pos)
            batch.append((fill, pos, sel, fill.pom.read(sel)))
        return batch

    def _inputs(self, batch: list[tuple[_Fill, Zyx, Slices, np.ndarray]]) -> FovBatch:
        """Model inputs of a gathered batch: normalised image and POM logits, one (z, y, x)
        array per FOV."""
        images = [self.image[sel] for _, _, sel, _ in batch]
        poms = [fov_input(old, self.pad_logit) for _, _, _, old in batch]
        return images, poms

    def _apply(self, batch: list[tuple[_Fill, Zyx, Slices, np.ndarray]], logits) -> None:
        """Merge the predicted logits of a gathered batch into the objects' POMs."""
        self.counters["fov_evaluations_total"] += len(batch)
        self.counters["forward_batches"] += 1
        for (fill, pos, sel, old), out in zip(batch, logits):
            out = merge_prediction(
                old, np.array(out, dtype=np.float32), self.options, self.move_logit
            )
            fill.pom.write(sel, out)
            fill.min_pos = np.minimum(fill.min_pos, pos)
            fill.max_pos = np.maximum(fill.max_pos, pos)
            fill.iterations += 1
            fill.movement.update(out, pos)

    # -- seed order ------------------------------------------------------------------------
    def _admit(self, fill: _Fill) -> None:
        if self.seed_rejection(fill.start) is None:
            self._start(fill)
        else:
            fill.state = "doomed"

    def _retire(self, fill: _Fill) -> tuple[np.ndarray, np.ndarray] | None:
        """Decide the head object against the committed state, as ``Canvas.try_seed``.

        Returns the box (lo, hi; z, y, x) of the voxels it committed, or None.
        """
        c = self.counters
        c["seeds_total"] += 1
        box = None
        reason = self.seed_rejection(fill.start)
        if reason is not None:
            self._refuse_seed(fill.start, reason)
            if fill.state != "doomed":  # cannot happen after _revalidate; kept for safety
                c["objects_cancelled"] += 1
        else:
            if fill.state != "done":
                raise AssertionError(f"seed {fill.start}: retired in state {fill.state}")
            c["seeds_tried"] += 1
            c["fov_evaluations"] += fill.iterations
            if fill.iterations > 0 and self._conclude(
                fill.start, fill.min_pos, fill.max_pos, fill.pom.read
            ):
                half = self.fov_size // 2
                box = (
                    np.maximum(fill.min_pos - half, 0),
                    np.minimum(fill.max_pos + half + 1, self.shape),
                )
        fill.drop()
        fill.state = "retired"
        return box

    def _revalidate(
        self, window: Iterable[_Fill], retired: _Fill, box: tuple[np.ndarray, np.ndarray] | None
    ) -> None:
        """After a retirement: cancel or restart later objects whose reads are now stale.

        Only what the retirement changed is looked at: the retired seed (if refused, it
        joined the rejected seeds) and, if it committed a segment, the box ``box`` of the
        committed voxels (seeds within the minimum boundary distance of it; accepted
        positions inside it).
        """
        c = self.counters
        deltas = np.asarray(self.predictor.deltas_zyx)
        if box is not None:
            mbd = np.asarray(self.options.min_boundary_dist_zyx)
            seed_lo, seed_hi = box[0] - mbd, box[1] + mbd
        for fill in window:
            if fill.state == "doomed":
                continue
            if box is None:
                if fill.start == retired.start and self.seed_rejection(fill.start) is not None:
                    c["objects_cancelled"] += 1
                    fill.drop()
                    fill.state = "doomed"
                continue
            start = np.asarray(fill.start)
            near = bool(np.all(start >= seed_lo) and np.all(start < seed_hi))
            if (near or fill.start == retired.start) and self.seed_rejection(
                fill.start
            ) is not None:
                c["objects_cancelled"] += 1
                fill.drop()
                fill.state = "doomed"
                continue
            if not fill.accepted:
                continue
            # Accepted positions lie within one movement step of the object's POM box.
            if np.any(fill.pom.hi + deltas <= box[0]) or np.any(fill.pom.lo - deltas >= box[1]):
                continue
            accepted = np.array(fill.accepted)
            inside = np.all((accepted >= box[0]) & (accepted < box[1]), axis=1)
            if inside.any() and np.any(self.segmentation[tuple(accepted[inside].T)] > 0):
                c["objects_restarted"] += 1
                self._start(fill)

    def _runnable(self, window: Iterable[_Fill]) -> list[_Fill]:
        """The running objects to advance now, in seed order.

        A later object whose seed an earlier object in the window already predicts as its
        own (POM >= segment threshold) waits: it is likely to be cancelled when that one
        commits. Waiting only changes when work is done, never the result; the head of
        the window never waits. The object that claimed a seed is remembered and asked
        first at the next step.
        """
        active = [f for f in window if f.state != "doomed"]
        seg = self.segment_logit
        order = {id(f): i for i, f in enumerate(active)}
        unclaimed: list[int] = []
        for i, fill in enumerate(active):
            if fill.state != "running" or i == 0:
                continue
            by = fill.claimed_by
            if by is not None and id(by) in order and by.pom is not None:
                if by.pom.get(fill.start) >= seg:
                    continue  # still claimed
            fill.claimed_by = None
            unclaimed.append(i)
        if unclaimed:
            starts = np.array([active[i].start for i in unclaimed], dtype=np.int64)  # (U, 3)
            lo = np.array([f.pom.lo for f in active], dtype=np.int64)  # (A, 3)
            hi = np.array([f.pom.hi for f in active], dtype=np.int64)
            inside = np.all((lo[:, None] <= starts[None]) & (starts[None] < hi[:, None]), axis=2)
            inside &= np.arange(len(active))[:, None] < np.array(unclaimed)[None]  # earlier
            for e, u in zip(*np.nonzero(inside)):
                fill = active[unclaimed[u]]
                if fill.claimed_by is None and active[e].pom.get(fill.start) >= seg:
                    fill.claimed_by = active[e]
        return [
            f
            for i, f in enumerate(active)
            if f.state == "running" and (i == 0 or f.claimed_by is None)
        ]

    def _claimed(self, fill: _Fill, active: list[_Fill], lo: np.ndarray, hi: np.ndarray) -> bool:
        """Whether an object of ``active`` (POM boxes ``lo``, ``hi``) claims ``fill``'s seed;
        the claimer is remembered for :meth:`_runnable`."""
        if not active:
            return False
        start = np.asarray(fill.start)
        for i in np.flatnonzero(np.all((lo <= start) & (start < hi), axis=1)):
            if active[i].pom.get(fill.start) >= self.segment_logit:
                fill.claimed_by = active[i]
                return True
        return False

    def segment_all(self, seeds: Iterable[Zyx], progress: bool = False) -> SegmentationResult:
        """Flood-fill from every seed in order (z, y, x voxel positions in this canvas)."""
        return segment_canvases([self], [seeds], progress=progress)[0]

    def fill_steps(
        self, seeds: Iterable[Zyx], progress: bool = False
    ) -> Generator[FovBatch, np.ndarray, SegmentationResult]:
        """:meth:`segment_all` as a generator: yields each batch of model inputs (image,
        POM logits; a z, y, x array per FOV), is sent the predicted logits (N, z, y, x),
        and returns the result. Lets one driver batch the FOVs of several canvases
        (:func:`segment_canvases`).
        """
        seeds = [tuple(int(v) for v in s) for s in seeds]
        t0 = time.perf_counter()
        bar = tqdm(
            total=len(seeds), desc="seeds", unit="seed", disable=not progress, mininterval=2.0
        )
        window: deque[_Fill] = deque()
        next_seed = 0
        while True:
            if window and window[0].state != "running":
                fill = window.popleft()
                box = self._retire(fill)
                self._revalidate(window, fill, box)
                bar.update(1)
                bar.set_postfix(
                    segments=int(self.counters["seeds_accepted"]),
                    fovs=int(self.counters["fov_evaluations_total"]),
                    refresh=False,
                )
                continue
            runnable = self._runnable(window)
            # Admit seeds in order while the batch has room and the window is not full
            # (``lookahead`` objects that are running or done).
            active = [f for f in window if f.state != "doomed"]
            if len(runnable) < self.max_objects and next_seed < len(seeds):
                lo = np.array([f.pom.lo for f in active]).reshape(-1, 3)
                hi = np.array([f.pom.hi for f in active]).reshape(-1, 3)
                n_active = len(active)
                while (
                    len(runnable) < self.max_objects
                    and next_seed < len(seeds)
                    and n_active < self.lookahead
                ):
                    fill = _Fill(order=next_seed, start=seeds[next_seed])
                    self._admit(fill)
                    window.append(fill)
                    next_seed += 1
                    if fill.state == "doomed":
                        continue
                    n_active += 1
                    if not self._claimed(fill, active, lo, hi):
                        runnable.append(fill)
            if not window:
                break
            if window[0].state != "running":
                continue  # a doomed head: retire it first
            batch = self._gather(runnable[: self.max_objects])
            if batch:
                logits = yield self._inputs(batch)
                self._apply(batch, logits)
        bar.close()
        c = self.counters
        c["fov_evaluations_discarded"] = c["fov_evaluations_total"] - c["fov_evaluations"]
        c["wall_s"] = round(time.perf_counter() - t0, 3)
        return self._result()


def segment_canvases(
    canvases: Sequence[BatchedCanvas],
    seeds: Sequence[Iterable[Zyx]],
    progress: bool = False,
    max_batch: int | None = None,
) -> list[SegmentationResult]:
    """Flood-fill several canvases (e.g. the blocks of a volume) together.

    Every step, the pending FOVs of all canvases go through the first canvas's predictor
    in one ``predict`` call (split into calls of at most ``max_batch`` FOVs), so that many
    small canvases fill a GPU as one large one would. Each canvas's result is what its
    own :meth:`BatchedCanvas.segment_all` gives (they share nothing but the predictor);
    the canvases must share one predictor configuration.
    """
    if len(canvases) != len(seeds):
        raise InputError(f"segment_canvases: {len(canvases)} canvases but {len(seeds)} seed lists")
    if not canvases:
        return []
    predictor = canvases[0].predictor
    steps = [
        c.fill_steps(s, progress=progress and len(canvases) == 1) for c, s in zip(canvases, seeds)
    ]
    results: list[SegmentationResult | None] = [None] * len(canvases)
    pending = start_fill_steps(dict(enumerate(steps)), results)
    while pending:
        order = sorted(pending)
        images = np.stack([a for i in order for a in pending[i][0]])
        poms = np.stack([a for i in order for a in pending[i][1]])
        if max_batch:
            logits = np.concatenate(
                [
                    predictor.predict(images[k : k + max_batch], poms[k : k + max_batch])
                    for k in range(0, len(images), max_batch)
                ]
            )
        else:
            logits = predictor.predict(images, poms)
        pending = send_fill_logits(steps, pending, logits, results)
    return results  # type: ignore[return-value]


FillSteps = Generator[FovBatch, np.ndarray, SegmentationResult]


def start_fill_steps(steps: dict[int, FillSteps], results) -> dict[int, FovBatch]:
    """Start the :meth:`BatchedCanvas.fill_steps` generators ``steps`` (by canvas index):
    their first batches of model inputs; canvases that finish at once go to ``results``."""
    pending: dict[int, FovBatch] = {}
    for i, gen in steps.items():
        try:
            pending[i] = next(gen)
        except StopIteration as stop:
            results[i] = stop.value
    return pending


def send_fill_logits(
    steps, pending: dict[int, FovBatch], logits: np.ndarray, results
) -> dict[int, FovBatch]:
    """Send every pending canvas its slice of ``logits`` (the FOVs of ``pending`` in
    canvas index order): their next batches; finished canvases' results go to ``results``."""
    sent: dict[int, FovBatch] = {}
    offset = 0
    for i in sorted(pending):
        n = len(pending[i][0])
        try:
            sent[i] = steps[i].send(logits[offset : offset + n])
        except StopIteration as stop:
            results[i] = stop.value
        offset += n
    return sent
