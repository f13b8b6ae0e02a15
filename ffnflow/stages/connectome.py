"""Stage 5: the connectome graph of the final segmentation.

Writes ``connectome.graphml`` (networkx MultiDiGraph, see :mod:`ffnflow.connectome`),
``connectome_nodes.csv``, ``connectome_edges.csv``, ``connectome_summary.json`` (counts,
degree distributions, largest components, synapses that fell outside every segment) and
``connectome_summary.png`` (degree histograms and component sizes).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
from skimage.segmentation import expand_labels

from ffnflow.atomic import atomic_output, write_json_atomic
from ffnflow.config import dataset_config
from ffnflow.connectome import (
    build_graph,
    graph_for_graphml,
    graph_summary,
    read_synapses,
)
from ffnflow.run_length import skeletonize
from ffnflow.volumes import read_volume

log = logging.getLogger("ffnflow")

NODE_COLUMNS = ("segment", "voxels", "volume_um3", "cable_length_nm", "bbox_zyx", "centroid_nm")


def run_extract_graph(
    config: dict[str, Any],
    dataset_name: str,
    segmentation_h5: str | Path,
    graphml: str | Path,
    nodes_csv: str | Path,
    edges_csv: str | Path,
    summary_json: str | Path,
    summary_png: str | Path,
) -> dict[str, Any]:
    """Build and write the connectome graph of ``segmentation_h5:labels``."""
    dataset = dataset_config(config, dataset_name)
    cfg = config["connectome"]
    labels = read_volume(f"{segmentation_h5}:labels")
    res = dataset.resolution_nm
    synapses = None
    if dataset.synapses is not None:
        synapses = read_synapses(dataset.synapses, res, dataset.synapse_units)
    skeletons = skeletonize(labels, res, dust_voxels=cfg["skeleton_dust_voxels"])
    cable = {k: s.cable_length_nm for k, s in skeletons.items()}
    contact_labels = labels
    if cfg["contact_gap_voxels"] > 0:
        contact_labels = expand_labels(labels, cfg["contact_gap_voxels"])
    graph, assignment = build_graph(
        labels,
        res,
        synapses,
        cable,
        contact_labels=contact_labels,
        offset_zyx=dataset.roi_offset_zyx,
    )
    summary = graph_summary(graph, assignment)
    summary["synapses_unassigned_rows"] = [
        {"row": i, "reason": reason} for i, reason in assignment.unassigned
    ]
    with atomic_output(graphml) as tmp:
        nx.write_graphml(graph_for_graphml(graph), tmp)
    _write_csv(
        nodes_csv,
        NODE_COLUMNS,
        (
            [
                n,
                d["voxels"],
                d["volume_um3"],
                d["cable_length_nm"],
                _join(d["bbox_zyx"]),
                _join(d["centroid_nm"]),
            ]
            for n, d in sorted(graph.nodes(data=True))
        ),
    )
    _write_csv(
        edges_csv,
        ("source", "target", "kind", "synapses", "area_um2"),
        (
            [a, b, d["kind"], d.get("weight", ""), d.get("area_um2", "")]
            for a, b, d in sorted(graph.edges(data=True), key=lambda e: (e[0], e[1], e[2]["kind"]))
        ),
    )
    write_json_atomic(summary_json, summary)
    plot_summary(graph, summary, summary_png, dataset_name)
    log.info(
        "connectome of %s: %d segments, %d synapse edges, %d contacts, %d synapses unassigned",
        dataset_name,
        summary["segments"],
        summary["synapse_edges"],
        summary["contact_edges"],
        len(assignment.unassigned),
    )
    return summary


def _join(values) -> str:
    return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def _write_csv(path, columns, rows) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)


def plot_summary(graph: nx.MultiDiGraph, summary: dict, png: str | Path, title: str) -> None:
    """Degree histograms (contacts, synapses in/out) and segment volumes as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for key, label in (
        ("contact_degree_histogram", "contacts"),
        ("synapse_out_degree_histogram", "synapses out"),
        ("synapse_in_degree_histogram", "synapses in"),
    ):
        hist = summary[key]
        if hist:
            axes[0].plot(list(hist), list(hist.values()), marker="o", label=label)
    axes[0].set_xlabel("degree")
    axes[0].set_ylabel("segments")
    axes[0].legend()
    axes[0].set_title("degree distribution")
    volumes = np.array([d["volume_um3"] for _, d in graph.nodes(data=True)])
    if len(volumes):
        axes[1].hist(volumes, bins=30)
    axes[1].set_xlabel("segment volume (µm³)")
    axes[1].set_title(f"{summary['segments']} segments")
    sizes = summary["largest_contact_components"]
    axes[2].bar(range(1, len(sizes) + 1), sizes)
    axes[2].set_xlabel("contact component (largest first)")
    axes[2].set_ylabel("segments")
    axes[2].set_title(
        f"{summary['contact_edges']} contacts, {summary['synapses_assigned']} synapses"
    )
    fig.suptitle(f"connectome of {title}")
    fig.tight_layout()
    with atomic_output(png) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
