"""Training of the mask net on real EM with ground truth and synthetic defects.

Every step draws one patch (z, y, x) from a training volume, augments it (flips, y/x
transpose, intensity gain and offset), injects random defects (:mod:`ffnflow.masknet.defects`)
and fits, with sigmoid cross-entropy:

- ``boundary``: the ground-truth boundary (:func:`ffnflow.masknet.targets.boundary_target`),
  ignored where a defect or an annotated class hides the tissue;
- ``exclude``: the injected defects, plus every annotated class of the volume's
  ``mask_labels`` (uint8 class ids, 0 = none);
- one channel per named user class (``classes[2:]``, class id = position - 1), fitted only
  on volumes that have an annotation.

Randomness of step ``k`` comes from ``numpy.random.default_rng([seed, k])`` alone, and the
state (model, optimizer, log) is saved every ``checkpoint_every`` steps, so a resumed run
ends with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ffnflow.atomic import atomic_output
from ffnflow.errors import InputError
from ffnflow.masknet.defects import DEFECT_KINDS, random_defects
from ffnflow.masknet.model import BASE_CLASSES, MaskNet, MaskNetArch, load_masknet, save_masknet
from ffnflow.masknet.targets import boundary_target, class_targets

log = logging.getLogger("ffnflow")

LOG_COLUMNS = ("step", "wall_s", "lr", "loss", "loss_boundary", "loss_exclude", "val_loss")


@dataclass(frozen=True)
class TrainingOptions:
    """Options of a training run; sizes are voxels, z, y, x."""

    steps: int = 2000
    patch_zyx: tuple[int, int, int] = (48, 48, 48)
    learning_rate: float = 0.002
    seed: int = 0
    defect_probability: float = 0.75
    max_defects: int = 2
    defect_kinds: tuple[str, ...] = DEFECT_KINDS
    exclude_pos_weight: float = 2.0
    checkpoint_every: int = 100
    validate_every: int = 100
    validation_patches: int = 4
    features: int = 8
    levels: int = 3
    pool_zyx: tuple[int, int, int] = (2, 2, 2)
    classes: tuple[str, ...] = field(default=BASE_CLASSES)
    defect_kind_weights: tuple[tuple[str, float], ...] = ()
    init_checkpoint: str | None = None

    def __post_init__(self) -> None:
        for name in ("patch_zyx", "pool_zyx", "defect_kinds", "classes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        weights = self.defect_kind_weights
        pairs = weights.items() if isinstance(weights, dict) else weights
        object.__setattr__(
            self, "defect_kind_weights", tuple(sorted((str(k), float(w)) for k, w in pairs))
        )
        unknown = (set(self.defect_kinds) | {k for k, _ in self.defect_kind_weights}) - set(
            DEFECT_KINDS
        )
        if unknown:
            raise InputError(
                f"masknet.training.defect_kinds {sorted(unknown)}: choose from {list(DEFECT_KINDS)}"
            )
        if sum(self.kind_probabilities()) <= 0:
            raise InputError("masknet.training.defect_kind_weights: every drawn kind weighs 0")

    def kind_probabilities(self) -> list[float]:
        """Probability of each of ``defect_kinds`` when a defect is drawn (the weights of
        ``defect_kind_weights``, 1 for kinds it does not name, normalised)."""
        given = dict(self.defect_kind_weights)
        weights = [given.get(kind, 1.0) for kind in self.defect_kinds]
        total = sum(weights)
        return [w / total for w in weights] if total > 0 else weights

    def arch(self) -> MaskNetArch:
        return MaskNetArch(self.features, self.levels, self.pool_zyx, self.classes)


@dataclass
class TrainingVolume:
    """One training region: ``raw`` (z, y, x), optional ``labels`` (neuron ids, 0 =
    unlabelled) and ``annotation`` (uint8 class ids, 0 = none), all the same shape."""

    name: str
    raw: np.ndarray
    labels: np.ndarray | None
    annotation: np.ndarray | None
    image_mean: float
    image_stddev: float

    def __post_init__(self) -> None:
        for role in ("labels", "annotation"):
            other = getattr(self, role)
            if other is not None and other.shape != self.raw.shape:
                raise InputError(
                    f"training volume {self.name}: {role} shape {other.shape} != raw {self.raw.shape}"
                )


@dataclass
class Sample:
    """A training patch: ``image`` (1, z, y, x) normalised, ``target`` and ``weight``
    (C, z, y, x) float32, and the defect kind map (uint8, z, y, x)."""

    image: np.ndarray
    target: np.ndarray
    weight: np.ndarray
    kinds: np.ndarray


def draw_sample(
    volume: TrainingVolume, options: TrainingOptions, rng: np.random.Generator, augment: bool = True
) -> Sample:
    """One augmented patch of a volume with defects and its targets."""
    patch = np.asarray(options.patch_zyx)
    if np.any(np.asarray(volume.raw.shape) < patch):
        raise InputError(
            f"training volume {volume.name}: shape {volume.raw.shape} smaller than patch {tuple(patch)}"
        )
    margin = 2  # boundary targets need the neighbours of the patch's outer voxels
    start = [int(rng.integers(0, s - p + 1)) for s, p in zip(volume.raw.shape, patch)]
    lo = [max(0, s - margin) for s in start]
    hi = [min(n, s + p + margin) for s, p, n in zip(start, patch, volume.raw.shape)]
    outer = tuple(slice(a, b) for a, b in zip(lo, hi))
    inner = tuple(slice(s - a, s - a + p) for s, a, p in zip(start, lo, patch))
    raw = volume.raw[outer].astype(np.float32)
    labels = None if volume.labels is None else volume.labels[outer]
    annotation = None if volume.annotation is None else volume.annotation[outer]
    if augment:
        flips = [axis for axis in range(3) if rng.random() < 0.5]
        transpose = rng.random() < 0.5 and options.pool_zyx[1] == options.pool_zyx[2]
        arrays = [raw, labels, annotation]
        for i, a in enumerate(arrays):
            if a is not None:
                a = np.flip(a, flips) if flips else a
                arrays[i] = np.ascontiguousarray(a.transpose(0, 2, 1) if transpose else a)
        inner = tuple(
            slice(n - s.stop, n - s.start) if axis in flips else s
            for axis, (s, n) in enumerate(zip(inner, raw.shape))
        )
        raw, labels, annotation = arrays
        if transpose:
            inner = (inner[0], inner[2], inner[1])
        raw = np.clip(raw * rng.uniform(0.85, 1.15) + rng.uniform(-15, 15), 0, 255)
    defected = random_defects(
        raw,
        rng,
        options.defect_probability,
        options.max_defects,
        options.defect_kinds,
        labels,
        options.kind_probabilities() if options.defect_kind_weights else None,
    )
    n_user = len(options.classes) - len(BASE_CLASSES)
    shape = raw.shape
    target = np.zeros((len(options.classes), *shape), np.float32)
    weight = np.zeros_like(target)
    annotated = np.zeros(shape, bool) if annotation is None else annotation > 0
    hidden = defected.exclude | annotated
    if defected.labels is not None:
        target[0] = boundary_target(defected.labels)
        weight[0] = ~hidden
    target[1] = hidden
    weight[1] = 1.0
    if n_user and annotation is not None:
        target[2:] = class_targets(annotation, n_user, shape)
        weight[2:] = 1.0
    image = (defected.image - volume.image_mean) / volume.image_stddev
    return Sample(
        image=image[inner][None].astype(np.float32),
        target=np.ascontiguousarray(target[(slice(None), *inner)]),
        weight=np.ascontiguousarray(weight[(slice(None), *inner)]),
        kinds=defected.kinds[inner],
    )


def step_sample(
    volumes: Sequence[TrainingVolume], options: TrainingOptions, step: int, stream: int = 0
) -> Sample:
    """The sample of training step ``step`` (``stream`` 1 = validation), deterministic."""
    rng = np.random.default_rng([options.seed, stream, step])
    sizes = np.array([v.raw.size for v in volumes], float)
    volume = volumes[int(rng.choice(len(volumes), p=sizes / sizes.sum()))]
    return draw_sample(volume, options, rng)


def masked_losses(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, exclude_pos_weight: float
) -> torch.Tensor:
    """Weighted mean sigmoid cross-entropy per class channel, ``(C,)``."""
    pos_weight = torch.ones(logits.shape[1], 1, 1, 1)
    pos_weight[1] = exclude_pos_weight
    bce = F.binary_cross_entropy_with_logits(
        logits, target, reduction="none", pos_weight=pos_weight
    )
    dims = (0, 2, 3, 4)
    return (bce * weight).sum(dims) / weight.sum(dims).clamp_min(1.0)


def _batch(samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(np.stack([s.image for s in samples])),
        torch.from_numpy(np.stack([s.target for s in samples])),
        torch.from_numpy(np.stack([s.weight for s in samples])),
    )


def learning_rate(options: TrainingOptions, step: int) -> float:
    """Cosine decay from ``learning_rate`` to 5 % of it over the run."""
    return options.learning_rate * (
        0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / options.steps))
    )


def fingerprint(options: TrainingOptions, sources: dict[str, Any]) -> str:
    """What a saved training state must match to be resumed (options and data sources)."""
    text = json.dumps({"options": asdict(options), "sources": sources}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_log_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def plot_loss_curve(
    path: str | Path, rows: Sequence[dict[str, Any]], title: str = "mask net"
) -> None:
    """Training loss (and its running mean) and validation loss against step, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise InputError(f"loss curve {path}: needs matplotlib (pip install matplotlib)") from exc
    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows], float)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, loss, color="0.75", lw=0.6, label="train (per step)")
    if len(loss) >= 5:
        k = min(50, len(loss))
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, color="C0", label=f"train ({k}-step mean)")
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") not in (None, "")]
    if val:
        ax.plot(*zip(*val), "o-", color="C1", ms=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (sum of class cross-entropies)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def init_from_checkpoint(model: MaskNet, path: str | Path) -> None:
    """Start from the weights of a mask net checkpoint of the same architecture."""
    loaded = load_masknet(path)
    if loaded.model.arch != model.arch:
        raise InputError(
            f"masknet.training.init_checkpoint {path}: architecture {loaded.model.arch} "
            f"differs from the one configured ({model.arch})"
        )
    model.load_state_dict(loaded.model.state_dict())


def train_masknet(
    volumes: Sequence[TrainingVolume],
    options: TrainingOptions,
    out_checkpoint: str | Path,
    log_csv: str | Path,
    curve_png: str | Path,
    state_path: str | Path,
    resolution_nm: tuple[float, float, float],
    sources: Any = None,
    stop_after: int | None = None,
) -> list[dict[str, Any]]:
    """Train (or resume from ``state_path``) and write the model, CSV log and loss curve.

    ``sources`` describes the data (written into the checkpoint's provenance and the
    resume fingerprint). ``stop_after`` ends the run early at that step, leaving the state
    to resume from (for tests). Returns the log rows.
    """
    if not volumes:
        raise InputError("masknet.training.datasets: no training volumes configured")
    sources = sources or {}
    if options.init_checkpoint:  # the run depends on the starting weights' content too
        if not Path(options.init_checkpoint).is_file():
            raise InputError(
                f"masknet.training.init_checkpoint {options.init_checkpoint}: not found"
            )
        with open(options.init_checkpoint, "rb") as fh:
            init_sha = hashlib.sha256(fh.read()).hexdigest()
        sources = {"data": sources, "init_checkpoint_sha256": init_sha}
    key = fingerprint(options, sources)
    torch.manual_seed(options.seed)
    model = MaskNet(options.arch())
    if options.init_checkpoint:
        init_from_checkpoint(model, options.init_checkpoint)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    rows: list[dict[str, Any]] = []
    step = 0
    state_path = Path(state_path)
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        if state.get("fingerprint") == key:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            rows, step = state["rows"], int(state["step"])
            log.info("resuming mask net training from %s at step %d", state_path, step)
        else:
            log.warning(
                "training state %s is for other options or data: starting afresh", state_path
            )
    validation = [
        step_sample(volumes, options, i, stream=1) for i in range(options.validation_patches)
    ]

    def save_state() -> None:
        with atomic_output(state_path) as tmp:
            torch.save(
                {
                    "fingerprint": key,
                    "step": step,
                    "rows": rows,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                },
                tmp,
            )

    t0 = time.perf_counter() - (rows[-1]["wall_s"] if rows else 0.0)
    end = options.steps if stop_after is None else min(stop_after, options.steps)
    model.train()
    while step < end:
        lr = learning_rate(options, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        image, target, weight = _batch([step_sample(volumes, options, step)])
        losses = masked_losses(model(image), target, weight, options.exclude_pos_weight)
        loss = losses.sum()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        step += 1
        row = {
            "step": step,
            "wall_s": round(time.perf_counter() - t0, 2),
            "lr": lr,
            "loss": loss.item(),
            "loss_boundary": losses[0].item(),
            "loss_exclude": losses[1].item(),
            "val_loss": "",
        }
        if options.validate_every and (step % options.validate_every == 0 or step == options.steps):
            model.eval()
            with torch.no_grad():
                vi, vt, vw = _batch(validation)
                row["val_loss"] = float(
                    masked_losses(model(vi), vt, vw, options.exclude_pos_weight).sum()
                )
            model.train()
            log.info(
                "step %d/%d loss %.4f val %.4f (%.0f s)",
                step,
                options.steps,
                row["loss"],
                row["val_loss"],
                row["wall_s"],
            )
        rows.append(row)
        if step % options.checkpoint_every == 0 or step == end:
            save_state()
    if step < options.steps:
        return rows
    model.eval()
    save_masknet(
        out_checkpoint,
        model,
        {"image_mean": volumes[0].image_mean, "image_stddev": volumes[0].image_stddev},
        resolution_nm,
        provenance=f"ffnflow mask net trained {options.steps} steps on {json.dumps(sources, default=str)}",
        extra={"training": {**asdict(options), "final_val_loss": rows[-1]["val_loss"]}},
    )
    write_log_csv(log_csv, rows)
    plot_loss_curve(curve_png, rows)
    return rows
