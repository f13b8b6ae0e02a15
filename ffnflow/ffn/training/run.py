"""A whole FFN training run: checkpoints, exact resume, signals, validation and the log.

The training state is saved every ``checkpoint_every`` steps, at the end and when the
process gets SIGTERM or SIGINT (after the step in progress) into ``state_path``. That file
is itself an ffnflow checkpoint (:func:`ffnflow.ffn.model.load_checkpoint` and the Canvas
read it) holding in addition ``training_state``: the step, the optimizer, the examples in
flight, the sampler position (examples used) and the RNG states of torch, numpy and
python. A run started again with the same options and data resumes from it and ends with
exactly the weights of an uninterrupted run (bit for bit on the CPU).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ffnflow.errors import InputError
from ffnflow.ffn.model import load_checkpoint, save_checkpoint
from ffnflow.ffn.training.coordinates import ExampleCoordinates
from ffnflow.ffn.training.curves import plot_training_curves, write_log_csv
from ffnflow.ffn.training.examples import TrainingVolume
from ffnflow.ffn.training.prefetch import Prefetcher
from ffnflow.ffn.training.sampler import BalancedSampler
from ffnflow.ffn.training.trainer import Trainer, TrainingOptions
from ffnflow.ffn.training.validation import ValidationSet, validation_inference, validation_loss

log = logging.getLogger("ffnflow")


class TrainingInterrupted(RuntimeError):
    """The run stopped on a signal after saving its state; run it again to resume."""

    def __init__(self, signum: int, state_path: Path) -> None:
        super().__init__(f"FFN training stopped by signal {signum}; state saved in {state_path}")
        self.signum = signum


def file_digest(path: str | Path) -> str:
    """SHA-256 (first 16 hex digits) of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def run_fingerprint(
    options: TrainingOptions, sources: dict[str, Any], init: dict[str, Any] | None
) -> str:
    """What a saved state must match to be resumed: the options that change the weights,
    the data and the initial weights."""
    opts = options.to_dict()
    for key in (
        "checkpoint_every",
        "validate_every",
        "log_every",
        "max_minutes",
        "prefetch",
        "device",
    ):
        opts.pop(key)
    text = json.dumps(
        {"options": opts, "sources": sources, "init": init}, sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def rng_states() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), numpy's global generator and python's ``random``."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [
            name,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore :func:`rng_states`."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))


@contextlib.contextmanager
def stop_signals() -> Iterator[list[int]]:
    """Within the block, SIGTERM and SIGINT are recorded in the yielded list instead of
    ending the process (main thread only; elsewhere signals keep their handlers)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, lambda s, _frame: received.append(s))
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def init_weights(init_checkpoint: str | Path | None, options: TrainingOptions):
    """The state dict to start from and its description, or (None, None)."""
    if not init_checkpoint:
        return None, None
    loaded = load_checkpoint(init_checkpoint)
    if loaded.model.arch != options.arch:
        raise InputError(
            f"ffn_training.init_checkpoint {init_checkpoint}: its architecture {loaded.model.arch} "
            f"differs from ffn_training.arch {options.arch}; set ffn_training.arch to match"
        )
    return loaded.model.state_dict(), {
        "path": str(init_checkpoint),
        "sha256": file_digest(init_checkpoint),
    }


def train_ffn(
    volumes: Sequence[TrainingVolume],
    examples: Sequence[ExampleCoordinates],
    options: TrainingOptions,
    out_checkpoint: str | Path,
    log_csv: str | Path,
    curve_png: str | Path,
    state_path: str | Path,
    normalization: dict[str, float],
    resolution_nm: Sequence[float],
    sources: dict[str, Any] | None = None,
    validation: ValidationSet | None = None,
    init_checkpoint: str | Path | None = None,
    stop_after: int | None = None,
) -> list[dict[str, Any]]:
    """Train (or resume from ``state_path``) and write the model, CSV log and loss curves.

    ``volumes[i]`` holds the regions of ``examples[i]`` (training centres, global z, y, x).
    ``normalization`` and ``resolution_nm`` go into the checkpoint; ``sources`` describes
    the data (provenance, resume fingerprint). ``stop_after`` ends the run at that step
    with only the state saved (for tests). Raises :class:`TrainingInterrupted` after a
    SIGTERM/SIGINT. Returns the log rows.
    """
    if len(volumes) != len(examples):
        raise InputError("FFN training: one set of training centres per training volume")
    sources = sources or {}
    state_path = Path(state_path)
    init_state, init_info = init_weights(init_checkpoint, options)
    key = run_fingerprint(options, sources, init_info)
    trainer = Trainer(volumes, BalancedSampler(examples), options, init_state)
    rows: list[dict[str, Any]] = []
    pending = (0.0, 0)  # loss sum and count since the last log row
    wall_before = 0.0
    if state_path.is_file():
        payload = torch.load(state_path, map_location="cpu", weights_only=True)
        saved = payload.get("training_state", {})
        if saved.get("fingerprint") == key:
            trainer.model.load_state_dict(payload["state_dict"])
            trainer.load_state(saved["trainer"])
            set_rng_states(saved["rng"])
            rows, pending, wall_before = (
                list(saved["rows"]),
                tuple(saved["pending"]),
                float(saved["wall_s"]),
            )
            log.info("resuming FFN training from %s at step %d", state_path, trainer.step)
        else:
            log.warning(
                "training state %s is for other options or data: starting afresh", state_path
            )

    provenance = f"ffnflow FFN training on {json.dumps(sources, default=str)}"
    t0 = time.perf_counter()

    def wall() -> float:
        return wall_before + time.perf_counter() - t0

    def save_state() -> None:
        training_state = {
            "fingerprint": key,
            "trainer": trainer.state(),
            "rng": rng_states(),
            "rows": rows,
            "pending": [float(loss_sum), loss_count],
            "wall_s": wall(),
        }
        save_checkpoint(
            state_path,
            trainer.model,
            normalization,
            resolution_nm,
            provenance,
            extra={"training": options.to_dict(), "training_state": training_state},
        )
        write_log_csv(log_csv, rows)

    def out_of_time() -> bool:
        return options.max_minutes is not None and wall() >= 60.0 * options.max_minutes

    # The loss is summed on the device, so that the loop does not wait for it every step.
    loss_sum = torch.tensor(pending[0], dtype=torch.float64, device=trainer.device)
    loss_count = int(pending[1])
    last_row = (trainer.fovs, wall())

    def log_row(validate: bool) -> None:
        """A log row: the mean loss since the last row, the speed, and validation."""
        nonlocal loss_count, last_row
        now = wall()
        row = {
            "step": trainer.step,
            "examples": trainer.next_example,
            "fovs": trainer.fovs,
            "wall_s": round(now, 2),
            "fov_per_s": round((trainer.fovs - last_row[0]) / max(now - last_row[1], 1e-9), 2),
            "lr": trainer.learning_rate(),
            "loss": float(loss_sum) / max(loss_count, 1),
        }
        loss_sum.zero_()
        loss_count = 0
        if validate and validation is not None:
            row.update(_validate(trainer, validation))
            log.info(
                "step %d/%d loss %.4f val loss %s VI %s ARAND %s (%.0f s)",
                trainer.step, options.steps, row["loss"], row.get("val_loss"),
                row.get("val_vi_sum"), row.get("val_arand"), now,
            )  # fmt: skip
        rows.append(row)
        last_row = (trainer.fovs, wall())

    end = options.steps if stop_after is None else min(stop_after, options.steps)
    with (
        stop_signals() as received,
        Prefetcher(trainer.make_example, trainer.next_example, options.prefetch) as source,
    ):
        trainer.source = source
        # The time limit is checked after each step, so every run makes at least one.
        while trainer.step < end and not received:
            loss_sum += trainer.train_step()
            loss_count += 1
            step = trainer.step
            validate = bool(options.validate_every) and (
                step % options.validate_every == 0 or step == options.steps
            )
            if step % options.log_every == 0 or validate or step == options.steps:
                log_row(validate)
            if step % options.checkpoint_every == 0:
                save_state()
                plot_training_curves(curve_png, rows)
            if out_of_time():
                break
        trainer.source = None
    timed_out = trainer.step < options.steps and not received and out_of_time()
    if timed_out and loss_count:
        log_row(validate=True)  # the run ends here: log and validate its last steps
    save_state()
    if received:
        raise TrainingInterrupted(received[0], state_path)
    if trainer.step < options.steps and not timed_out:
        return rows
    if timed_out:
        log.info("FFN training: max_minutes reached at step %d of %d", trainer.step, options.steps)
    trainer.model.eval()
    save_checkpoint(
        out_checkpoint,
        trainer.model,
        normalization,
        resolution_nm,
        provenance,
        extra={
            "training": {
                **options.to_dict(),
                "steps_done": trainer.step,
                "fovs": trainer.fovs,
                "wall_s": round(wall(), 1),
                "init": init_info,
            }
        },
    )
    write_log_csv(log_csv, rows)
    plot_training_curves(curve_png, rows)
    return rows


def _validate(trainer: Trainer, validation: ValidationSet) -> dict[str, Any]:
    """Validation columns of a log row."""
    out: dict[str, Any] = {"val_loss": validation_loss(trainer, validation)}
    if len(validation.seeds):
        m = validation_inference(trainer, validation)
        out.update(
            val_vi_split=m["vi_split"],
            val_vi_merge=m["vi_merge"],
            val_vi_sum=m["vi_sum"],
            val_arand=m["arand"],
            val_segments=m["n_segments"],
            val_fraction_segmented=m["fraction_segmented"],
        )
    return out
