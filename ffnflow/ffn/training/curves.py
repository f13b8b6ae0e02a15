"""The log of an FFN training run: a CSV of its rows and a PNG of its loss curves."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ffnflow.atomic import atomic_output
from ffnflow.errors import InputError

LOG_COLUMNS = (
    "step",
    "examples",
    "fovs",
    "wall_s",
    "fov_per_s",
    "lr",
    "loss",
    "val_loss",
    "val_vi_split",
    "val_vi_merge",
    "val_vi_sum",
    "val_arand",
    "val_segments",
    "val_fraction_segmented",
)


def write_log_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write the log rows (:data:`LOG_COLUMNS`; empty where not measured), atomically."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(r["step"], r[key]) for r in rows if r.get(key) not in (None, "")]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*pairs)
    return np.asarray(steps, float), np.asarray(values, float)


def plot_training_curves(
    path: str | Path, rows: Sequence[dict[str, Any]], title: str = "FFN training"
) -> None:
    """PNG: training loss (per row and smoothed) and validation loss against step; beside
    it, the validation VI (split + merge) and adapted Rand error when measured."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise InputError(f"loss curve {path}: needs matplotlib (pip install matplotlib)") from exc
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    steps, loss = _series(rows, "loss")
    ax.plot(steps, loss, color="0.75", lw=0.6, label="train (per log row)")
    if len(loss) >= 5:
        k = min(20, len(loss))
        ax.plot(
            steps[k - 1 :],
            np.convolve(loss, np.ones(k) / k, mode="valid"),
            color="C0",
            label=f"train ({k}-row mean)",
        )
    vs, vl = _series(rows, "val_loss")
    if len(vl):
        ax.plot(vs, vl, "o-", color="C1", ms=3, label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("sigmoid cross-entropy (mean per voxel)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    for key, label, color in (
        ("val_vi_sum", "VI split + merge (bits)", "C2"),
        ("val_arand", "adapted Rand error", "C3"),
    ):
        s, v = _series(rows, key)
        if len(v):
            ax2.plot(s, v, "o-", ms=3, color=color, label=label)
    ax2.set_xlabel("step")
    ax2.set_title("validation flood filling")
    if ax2.lines:
        ax2.legend()
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
