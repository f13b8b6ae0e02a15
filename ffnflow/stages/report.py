"""Report figures: orthogonal slice overlays and the per-stage metrics table."""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ffnflow.atomic import atomic_output
from ffnflow.config import dataset_config
from ffnflow.stages.common import open_mask_output, read_raw
from ffnflow.volumes import read_volume

log = logging.getLogger("ffnflow")

METRIC_COLUMNS = (
    ("vi_split", "VI split (bits)", "{:.3f}"),
    ("vi_merge", "VI merge (bits)", "{:.3f}"),
    ("vi_sum", "VI sum (bits)", "{:.3f}"),
    ("arand", "adapted Rand error", "{:.3f}"),
    ("erl_nm", "ERL (µm)", "{:.2f}"),
    ("erl_splits", "ERL splits", "{:d}"),
    ("erl_merges", "ERL merges", "{:d}"),
    ("n_segments", "segments", "{:d}"),
    ("fraction_segmented", "labelled", "{:.1%}"),
)


def label_colors(labels: np.ndarray, seed: int = 7) -> np.ndarray:
    """An RGB colour per voxel (float 0..1, ``labels.shape + (3,)``), the same for the same id."""
    ids = np.asarray(labels, dtype=np.uint64)
    # Hash ids to colours (splitmix64) so neighbouring ids look different.
    x = ids * np.uint64(0x9E3779B97F4A7C15) + np.uint64(seed)
    x ^= x >> np.uint64(31)
    rgb = np.stack([(x >> np.uint64(s)) & np.uint64(255) for s in (0, 8, 16)], axis=-1)
    return 0.25 + 0.75 * rgb.astype(np.float32) / 255.0


def overlay(raw: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """A 2D slice's raw (grey) blended with its segment colours (RGB float 0..1)."""
    grey = raw.astype(np.float32)
    grey = (grey - grey.min()) / max(float(np.ptp(grey)), 1e-6)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    labelled = labels > 0
    rgb[labelled] = (1 - alpha) * rgb[labelled] + alpha * label_colors(labels[labelled])
    return rgb


def run_render_overlays(
    config: dict[str, Any],
    dataset_name: str,
    segmentation_h5: str | Path,
    png: str | Path,
    mask_h5: str | Path | None = None,
) -> None:
    """Slices through the volume's middle along z, y and x: raw, segmentation, mask."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset = dataset_config(config, dataset_name)
    raw = read_raw(dataset)
    labels = read_volume(f"{segmentation_h5}:labels")
    exclude = boundary = None
    if mask_h5 is not None:
        exclude = open_mask_output(mask_h5, "exclude", raw.shape).read()
        boundary = open_mask_output(mask_h5, "boundary", raw.shape).read()
    rows = 3 if exclude is not None else 2
    centre = [n // 2 for n in raw.shape]
    fig, axes = plt.subplots(rows, 3, figsize=(12, 4 * rows), squeeze=False)
    for col, (axis, name) in enumerate(zip(range(3), "zyx")):
        sel = [slice(None)] * 3
        sel[axis] = centre[axis]
        sel = tuple(sel)
        axes[0, col].imshow(raw[sel], cmap="gray")
        axes[0, col].set_title(f"EM, {name} = {centre[axis]}")
        axes[1, col].imshow(overlay(raw[sel], labels[sel]))
        n = len(np.unique(labels[sel])) - 1
        axes[1, col].set_title(f"segmentation, {name} = {centre[axis]} ({n} segments)")
        if exclude is not None:
            rgb = np.stack([exclude[sel] / 255.0, boundary[sel] / 255.0, boundary[sel] / 255.0], -1)
            axes[2, col].imshow(np.clip(rgb, 0, 1))
            axes[2, col].set_title(f"mask: exclude (red), boundary (cyan), {name}")
        for ax in axes[:, col]:
            ax.set_axis_off()
    fig.suptitle(f"{dataset_name}: orthogonal slices (z, y, x voxels)")
    fig.tight_layout()
    with atomic_output(png) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    log.info("overlays of %s written to %s", dataset_name, png)


def metrics_table_html(metrics: dict[str, Any], title: str) -> str:
    """A self-contained HTML table of the per-stage metrics of a metrics.json."""
    stages = metrics.get("stages") or {"final": metrics}
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in METRIC_COLUMNS)
    rows = []
    for stage, figures in stages.items():
        cells = []
        for key, _, fmt in METRIC_COLUMNS:
            value = figures.get(key)
            if value is None:
                cells.append("<td>-</td>")
                continue
            if key == "erl_nm":
                value = value / 1000.0
            cells.append(f"<td>{html.escape(fmt.format(value))}</td>")
        rows.append(f"<tr><th>{html.escape(stage)}</th>{''.join(cells)}</tr>")
    style = (
        "table{border-collapse:collapse;font-family:sans-serif}"
        "td,th{border:1px solid #999;padding:4px 8px;text-align:right}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h3>{html.escape(title)}</h3>"
        f"<table><tr><th>stage</th>{head}</tr>{''.join(rows)}</table></body></html>\n"
    )


def run_tabulate_metrics(metrics_json: str | Path, table_html: str | Path, title: str) -> None:
    """Write the metrics of every stage as an HTML table."""
    metrics = json.loads(Path(metrics_json).read_text())
    with atomic_output(table_html) as tmp:
        Path(tmp).write_text(metrics_table_html(metrics, title), encoding="utf-8")
