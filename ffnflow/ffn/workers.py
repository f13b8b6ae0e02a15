"""Flood-fill many canvases in worker processes that share one predictor (one GPU).

:func:`~ffnflow.ffn.batched.segment_canvases` runs every canvas's bookkeeping (movement
queues, POM boxes, seed checks: about 0.5-1 ms of Python and numpy per FOV) in the
process that also drives the GPU, so a fast GPU waits for one CPU core.
:func:`segment_canvases_in_workers` spreads the canvases over ``workers`` forked
processes. Each worker advances its canvases one step, writes their FOV inputs into its
shared-memory slot and tells the main process how many there are; the main process
queues the FOVs of the workers that are ready and sends them through the predictor in
calls of ``fixed_batch`` FOVs (the predictor's, or at most ``max_batch``), launching the
next call while the previous one runs (``in_flight`` calls at a time, with a predictor
that has ``submit``); once all of a worker's FOVs have landed, it is released. Workers
compute while the GPU runs other workers' FOVs, so CPU and GPU work overlap, the CPU
work runs on ``workers`` cores and the GPU does not wait for the main process.

Each canvas's result is exactly what its own ``segment_all`` gives when the predictor's
output for a FOV does not depend on the rest of its batch (as for
:func:`~ffnflow.ffn.batched.segment_canvases`). Linux only (``fork``): the workers
inherit the canvases and the shared memory; they never touch the predictor, so a CUDA
context in the main process is safe.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import time
import traceback
from collections import deque
from collections.abc import Iterable, Sequence
from multiprocessing.connection import Connection, wait

import numpy as np

from ffnflow.errors import InputError
from ffnflow.ffn.batched import BatchedCanvas, send_fill_logits, start_fill_steps
from ffnflow.ffn.canvas import SegmentationResult, Zyx
from ffnflow.ffn.predictor import PendingPrediction, predict_into_with_predict

_POLL_S = 0.0003  # how long the main process waits for a worker between looks at the device


def _shared_array(shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array in anonymous shared memory (shared with processes forked later)."""
    size = int(np.prod(shape)) * 4
    buf = mmap.mmap(-1, max(size, 1))
    return np.frombuffer(buf, dtype=np.float32, count=int(np.prod(shape))).reshape(shape)


def _worker_loop(
    conn: Connection,
    canvases: Sequence[BatchedCanvas],
    seeds: Sequence[list[Zyx]],
    mine: list[int],
    inputs: np.ndarray,
    outputs: np.ndarray,
) -> None:
    """Run the fills of canvases ``mine``; talk to the main process over ``conn``. Sends
    the results with this worker's busy seconds (all but the waits for logits) and steps."""
    try:
        busy, t = 0.0, time.perf_counter()
        steps = {i: canvases[i].fill_steps(seeds[i]) for i in mine}
        results: dict[int, SegmentationResult] = {}
        pending = start_fill_steps(steps, results)
        n_steps = 0
        while pending:
            order = sorted(pending)
            k = 0
            for i in order:
                for image, pom in zip(*pending[i]):
                    inputs[k, 0] = image
                    inputs[k, 1] = pom
                    k += 1
            conn.send(k)
            busy += time.perf_counter() - t
            if conn.recv() != "go":
                return  # the main process gave up
            t = time.perf_counter()
            n_steps += 1
            pending = send_fill_logits(steps, pending, outputs[:k], results)
        busy += time.perf_counter() - t
        conn.send(("results", results, {"busy_s": busy, "steps": n_steps}))
    except BaseException:  # noqa: BLE001 - reported to the main process, which raises
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def segment_canvases_in_workers(
    canvases: Sequence[BatchedCanvas],
    seeds: Sequence[Iterable[Zyx]],
    predictor,
    workers: int,
    max_batch: int | None = None,
    in_flight: int = 2,
    batch: int | None = None,
    stats: dict | None = None,
) -> list[SegmentationResult]:
    """Flood-fill ``canvases`` (each from its ``seeds``, z, y, x) in ``workers`` processes,
    their FOVs evaluated by ``predictor`` in this process.

    ``predictor`` needs ``submit`` (as :class:`~ffnflow.ffn.predictor.FovPredictor`; up to
    ``in_flight`` calls at a time), ``predict_into`` or ``predict``; the canvases only
    need its geometry (``fov_size_zyx``, ``deltas_zyx``). A call starts while another
    runs once ``batch`` FOVs are queued (default: the predictor's ``fixed_batch``; None:
    one call at a time), and with fewer only when none runs; calls hold at most the
    predictor's ``fixed_batch`` and ``max_batch`` FOVs. ``stats``, when given, is filled
    with the workers' busy share, the number of calls and their mean size, and the FOVs
    queued at each launch. Returns one result per canvas, in order.
    """
    if len(canvases) != len(seeds):
        raise InputError(f"segment_canvases: {len(canvases)} canvases but {len(seeds)} seed lists")
    if int(workers) < 1:
        raise InputError(f"segment_canvases_in_workers: workers {workers} < 1")
    if "fork" not in mp.get_all_start_methods():
        raise InputError("segment_canvases_in_workers: needs the 'fork' start method (Linux)")
    if not canvases:
        return []
    seeds = [[tuple(int(v) for v in s) for s in seed_list] for seed_list in seeds]
    workers = min(int(workers), len(canvases))
    fov = tuple(int(v) for v in predictor.fov_size_zyx)
    assignment = [list(range(w, len(canvases), workers)) for w in range(workers)]
    ctx = mp.get_context("fork")
    slots = []
    procs = []
    children = []
    conns: dict[Connection, int] = {}
    for w, mine in enumerate(assignment):
        capacity = sum(canvases[i].max_objects for i in mine)
        inputs = _shared_array((capacity, 2, *fov))
        outputs = _shared_array((capacity, *fov))
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_worker_loop,
            args=(child, canvases, seeds, mine, inputs, outputs),
            name=f"ffnflow-fill-{w}",
            daemon=True,
        )
        slots.append((inputs, outputs))
        procs.append(proc)
        children.append(child)
        conns[parent] = w
    for proc in procs:
        proc.start()
    for child in children:
        child.close()  # so that a dead worker's pipe reads as closed here
    # Page-locked slots: the device copies them without a staging copy (CUDA).
    pin = getattr(predictor, "pin_host_memory", None)
    pinned = [a for slot in slots for a in slot if pin is not None and pin(a)]
    feeder = _Feeder(predictor, slots, max_batch, in_flight, batch)
    results: dict[int, SegmentationResult] = {}
    worker_stats: list[dict] = []
    t_start = time.perf_counter()
    live = dict(conns)
    by_worker = {w: conn for conn, w in conns.items()}
    try:
        while live or feeder.busy():
            # Block for the workers only when there is nothing else to do.
            idle = not feeder.busy()
            for conn in wait(list(live), None if idle else 0) if live else []:
                w = live[conn]
                try:
                    msg = conn.recv()
                except EOFError as exc:
                    procs[w].join(timeout=5)
                    raise RuntimeError(
                        f"fill worker {w} died (exit code {procs[w].exitcode})"
                    ) from exc
                if isinstance(msg, int):
                    if msg:
                        feeder.add(w, msg)
                    else:
                        conn.send("go")
                elif msg[0] == "results":
                    results.update(msg[1])
                    worker_stats.append(msg[2])
                    del live[conn]
                else:
                    raise RuntimeError(f"fill worker {w} failed:\n{msg[1]}")
            progressed = feeder.launch()
            for w in feeder.land(block=not live):
                by_worker[w].send("go")
                progressed = True
            if not progressed and feeder.busy():
                # Calls in flight and too few FOVs for another: a short wait for a worker
                # (or, with every call slot taken, for the oldest call) before looking again.
                if feeder.full() or not live:
                    for w in feeder.land(block=True):
                        by_worker[w].send("go")
                else:
                    wait(list(live), _POLL_S)
    finally:
        feeder.drain()  # no copy may still write into the slots
        for conn in conns:
            if conn in live:
                try:
                    conn.send("stop")
                except (BrokenPipeError, OSError):
                    pass
            conn.close()
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
        for array in pinned:
            predictor.unpin_host_memory(array)
    if stats is not None:
        wall = time.perf_counter() - t_start
        busy = [w["busy_s"] for w in worker_stats]
        stats.update(
            workers=workers,
            wall_s=round(wall, 3),
            worker_busy_fraction=round(sum(busy) / max(wall * workers, 1e-9), 3),
            worker_steps=sum(w["steps"] for w in worker_stats),
            calls=feeder.calls,
            mean_call=round(feeder.launched / max(feeder.calls, 1), 1),
            mean_queued_at_launch=round(feeder.queued_at_launch / max(feeder.calls, 1), 1),
            calls_while_busy=feeder.calls_while_busy,
        )
    return [results[i] for i in range(len(canvases))]


class _Feeder:
    """The ready workers' FOVs, queued and sent through the predictor in calls of at most
    ``limit`` FOVs (the predictor's ``fixed_batch``, ``max_batch``) with up to ``depth``
    calls in flight (while one call runs on the device, the next is copied there and
    launched). A call starts while another runs once ``batch`` FOVs are queued, and with
    fewer only when none runs (the device never waits for FOVs that are there). A worker
    is released once all its FOVs have landed."""

    def __init__(
        self, predictor, slots, max_batch: int | None, depth: int, batch: int | None = None
    ) -> None:
        self.predictor = predictor
        self.slots = slots
        fixed = getattr(predictor, "fixed_batch", None)
        limits = [int(v) for v in (fixed, max_batch) if v]
        self.limit = min(limits) if limits else None  # None: any size
        target = batch or fixed
        self.batch = min(int(target), self.limit or int(target)) if target else None
        self.calls = self.launched = self.queued_at_launch = self.calls_while_busy = 0
        self.submit = getattr(predictor, "submit", None)
        self.depth = max(1, int(depth)) if self.submit is not None else 1
        self.queue: deque[list[int]] = deque()  # [worker, first FOV, end] in its slot
        self.queued = 0
        self.owed: dict[int, int] = {}  # FOVs of a worker not landed yet
        self.flights: deque[tuple[object, list[tuple[int, int]]]] = deque()

    def add(self, w: int, n: int) -> None:
        self.queue.append([w, 0, n])
        self.queued += n
        self.owed[w] = n

    def busy(self) -> bool:
        return bool(self.flights or self.queued)

    def full(self) -> bool:
        return len(self.flights) >= self.depth

    def launch(self) -> bool:
        """Launch every call that may start now; whether one did."""
        launched = False
        while self.queued and not self.full():
            if self.flights and (not self.batch or self.queued < self.batch):
                break  # a call is running: wait for a full batch (or, without one, for it)
            self.calls += 1
            self.queued_at_launch += self.queued
            self.calls_while_busy += bool(self.flights)
            self._launch(min(self.queued, self.limit or self.queued))
            launched = True
        return launched

    def _launch(self, size: int) -> None:
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        counts: list[tuple[int, int]] = []
        taken = 0
        while taken < size:
            item = self.queue[0]
            w, start, end = item
            take = min(size - taken, end - start)
            inputs, outputs = self.slots[w]
            parts.append((inputs[start : start + take], outputs[start : start + take]))
            counts.append((w, take))
            taken += take
            if start + take == end:
                self.queue.popleft()
            else:
                item[1] = start + take
        self.queued -= taken
        self.launched += taken
        if self.submit is not None:
            call = self.submit(parts)
        else:
            if hasattr(self.predictor, "predict_into"):
                self.predictor.predict_into(parts)
            else:
                predict_into_with_predict(self.predictor, parts)
            call = PendingPrediction()  # done: it ran synchronously
        self.flights.append((call, counts))

    def land(self, block: bool = False) -> list[int]:
        """Collect the calls that have landed (all of them, in order, if ``block``; else
        the finished ones at the front); the workers whose FOVs have all landed."""
        released = []
        while self.flights and (block or self.flights[0][0].done()):
            call, counts = self.flights.popleft()
            call.wait()
            for w, m in counts:
                self.owed[w] -= m
                if self.owed[w] == 0:
                    del self.owed[w]
                    released.append(w)
            if block:
                break  # the oldest only: the others keep the device busy
        return released

    def drain(self) -> None:
        """Wait for every call in flight (errors ignored: used while giving up)."""
        while self.flights:
            try:
                self.flights.popleft()[0].wait()
            except Exception:  # noqa: BLE001 - already failing
                pass
