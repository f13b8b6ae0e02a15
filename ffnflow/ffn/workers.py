"""Flood-fill many canvases in worker processes that share one predictor (one GPU).

:func:`~ffnflow.ffn.batched.segment_canvases` runs every canvas's bookkeeping (movement
queues, POM boxes, seed checks: about 0.5-1 ms of Python and numpy per FOV) in the
process that also drives the GPU, so a fast GPU waits for one CPU core.
:func:`segment_canvases_in_workers` spreads the canvases over ``workers`` forked
processes. Each worker advances its canvases one step, writes their FOV inputs into its
shared-memory slot and tells the main process how many there are; the main process takes
the inputs of every worker that is ready, runs them through the predictor in one call
(at most ``max_batch`` FOVs per call), writes the logits back and releases those
workers. Workers compute while the GPU runs other workers' FOVs, so CPU and GPU work
overlap and the CPU work runs on ``workers`` cores.

Each canvas's result is exactly what its own ``segment_all`` gives when the predictor's
output for a FOV does not depend on the rest of its batch (as for
:func:`~ffnflow.ffn.batched.segment_canvases`). Linux only (``fork``): the workers
inherit the canvases and the shared memory; they never touch the predictor, so a CUDA
context in the main process is safe.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import traceback
from collections.abc import Iterable, Sequence
from multiprocessing.connection import Connection, wait

import numpy as np

from ffnflow.errors import InputError
from ffnflow.ffn.batched import BatchedCanvas, send_fill_logits, start_fill_steps
from ffnflow.ffn.canvas import SegmentationResult, Zyx
from ffnflow.ffn.predictor import predict_into_with_predict


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
    """Run the fills of canvases ``mine``; talk to the main process over ``conn``."""
    try:
        steps = {i: canvases[i].fill_steps(seeds[i]) for i in mine}
        results: dict[int, SegmentationResult] = {}
        pending = start_fill_steps(steps, results)
        while pending:
            order = sorted(pending)
            k = 0
            for i in order:
                for image, pom in zip(*pending[i]):
                    inputs[k, 0] = image
                    inputs[k, 1] = pom
                    k += 1
            conn.send(k)
            if conn.recv() != "go":
                return  # the main process gave up
            pending = send_fill_logits(steps, pending, outputs[:k], results)
        conn.send(("results", results))
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
) -> list[SegmentationResult]:
    """Flood-fill ``canvases`` (each from its ``seeds``, z, y, x) in ``workers`` processes,
    their FOVs evaluated by ``predictor`` in this process.

    ``predictor`` needs ``predict_into`` (as :class:`~ffnflow.ffn.predictor.FovPredictor`)
    or ``predict``; the canvases only need its geometry (``fov_size_zyx``,
    ``deltas_zyx``). Returns one result per canvas, in order.
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
    results: dict[int, SegmentationResult] = {}
    live = dict(conns)
    try:
        while live:
            ready: list[tuple[Connection, int, int]] = []
            for conn in wait(list(live)):
                w = live[conn]
                try:
                    msg = conn.recv()
                except EOFError as exc:
                    procs[w].join(timeout=5)
                    raise RuntimeError(
                        f"fill worker {w} died (exit code {procs[w].exitcode})"
                    ) from exc
                if isinstance(msg, int):
                    ready.append((conn, w, msg))
                elif msg[0] == "results":
                    results.update(msg[1])
                    del live[conn]
                else:
                    raise RuntimeError(f"fill worker {w} failed:\n{msg[1]}")
            if not ready:
                continue
            _evaluate(predictor, [(slots[w], n) for _, w, n in ready], max_batch)
            for conn, _, _ in ready:
                conn.send("go")
    finally:
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
    return [results[i] for i in range(len(canvases))]


def _evaluate(predictor, ready: list[tuple[tuple[np.ndarray, np.ndarray], int]], max_batch):
    """Predict the FOVs of the ready workers' slots, writing their outputs in place."""
    parts = [(inputs[:n], outputs[:n]) for (inputs, outputs), n in ready if n]
    total = sum(int(i.shape[0]) for i, _ in parts)
    limit = int(max_batch) if max_batch else max(total, 1)
    # Calls of at most ``limit`` FOVs; a worker's FOVs may span two calls.
    chunk: list[tuple[np.ndarray, np.ndarray]] = []
    size = 0
    for inputs, outputs in parts:
        start = 0
        while start < inputs.shape[0]:
            take = min(limit - size, inputs.shape[0] - start)
            chunk.append((inputs[start : start + take], outputs[start : start + take]))
            size += take
            start += take
            if size >= limit:
                _predict_chunk(predictor, chunk)
                chunk, size = [], 0
    _predict_chunk(predictor, chunk)


def _predict_chunk(predictor, chunk: list[tuple[np.ndarray, np.ndarray]]) -> None:
    if not chunk:
        return
    if hasattr(predictor, "predict_into"):
        predictor.predict_into(chunk)
    else:
        predict_into_with_predict(predictor, chunk)
