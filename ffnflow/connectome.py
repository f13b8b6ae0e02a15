"""The connectome graph: segments as nodes, synapses and contacts as edges (networkx).

Nodes are segment ids with ``voxels``, ``volume_um3``, ``bbox_zyx`` (voxels, start
inclusive, stop exclusive), ``centroid_nm`` (z, y, x) and ``cable_length_nm`` (kimimaro
skeleton; 0 where none was made). The graph is a ``networkx.MultiDiGraph`` holding two edge
kinds, told apart by the ``kind`` attribute:

- ``synapse``: directed pre -> post, ``weight`` = number of synapses;
- ``contact``: undirected in meaning, stored once from the smaller to the larger id,
  ``area_um2`` = area of the shared face between the two segments (6-connected faces).
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cc3d
import networkx as nx
import numpy as np

from ffnflow.errors import InputError

SYNAPSE_COLUMNS = ("pre_z", "pre_y", "pre_x", "post_z", "post_y", "post_x")


@dataclass
class Synapses:
    """Synapse points: ``pre``/``post`` (N, 3) voxel indices, z, y, x."""

    pre: np.ndarray
    post: np.ndarray

    def __len__(self) -> int:
        return len(self.pre)


@dataclass
class SynapseAssignment:
    """Directed synapse counts between segments and the synapses that could not be placed.

    ``unassigned`` rows: (index in the table, reason) with reason ``outside_volume``,
    ``pre_unsegmented`` or ``post_unsegmented``.
    """

    counts: Counter = field(default_factory=Counter)
    unassigned: list[tuple[int, str]] = field(default_factory=list)


def read_synapses(
    path: str | Path, resolution_nm: tuple[float, float, float], units: str = "nm"
) -> Synapses:
    """Read a synapse CSV with columns pre_z,pre_y,pre_x,post_z,post_y,post_x.

    ``units`` is ``nm`` (points are divided by the voxel size and rounded) or ``voxels``.
    """
    path = Path(path)
    if units not in ("nm", "voxels"):
        raise InputError(f"synapse units {units!r}: expected 'nm' or 'voxels'")
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in SYNAPSE_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}: missing synapse columns {missing}")
            rows = [[float(row[c]) for c in SYNAPSE_COLUMNS] for row in reader]
    except FileNotFoundError:
        raise InputError(f"{path}: synapse table not found") from None
    except ValueError as e:
        raise InputError(f"{path}: not a numeric synapse table ({e})") from None
    points = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
    if not np.all(np.isfinite(points)):
        raise InputError(f"{path}: synapse table has non-finite coordinates")
    if units == "nm":
        points = points / np.tile(np.asarray(resolution_nm, dtype=np.float64), 2)
    voxels = np.rint(points).astype(np.int64)
    return Synapses(pre=voxels[:, :3], post=voxels[:, 3:])


def assign_synapses(segmentation: np.ndarray, synapses: Synapses) -> SynapseAssignment:
    """Count synapses per (pre segment, post segment) of a label volume (z, y, x)."""
    result = SynapseAssignment()
    n = len(synapses)
    if n == 0:
        return result
    shape = np.asarray(segmentation.shape)
    pre, post = np.asarray(synapses.pre), np.asarray(synapses.post)
    inside = np.all((pre >= 0) & (pre < shape) & (post >= 0) & (post < shape), axis=1)
    a = np.zeros(n, dtype=np.uint64)
    b = np.zeros(n, dtype=np.uint64)
    a[inside] = segmentation[tuple(pre[inside].T)]
    b[inside] = segmentation[tuple(post[inside].T)]
    reason = np.full(n, "", dtype=object)
    reason[(b == 0) & inside] = "post_unsegmented"
    reason[(a == 0) & inside] = "pre_unsegmented"
    reason[~inside] = "outside_volume"
    result.unassigned = [(int(i), str(reason[i])) for i in np.flatnonzero(reason != "")]
    ok = reason == ""
    pairs, counts = np.unique(np.stack([a[ok], b[ok]], axis=1), axis=0, return_counts=True)
    result.counts.update({(int(x), int(y)): int(c) for (x, y), c in zip(pairs, counts)})
    return result


def contact_areas_um2(
    segmentation: np.ndarray, resolution_nm: tuple[float, float, float]
) -> dict[tuple[int, int], float]:
    """Area of the faces shared by every pair of touching segments (a < b), µm².

    Faces between 6-neighbours: a z-face is ``ry * rx``, etc. (cc3d.contacts).
    """
    # cc3d's anisotropy is in the array's axis order, which here is z, y, x.
    areas = cc3d.contacts(
        np.ascontiguousarray(segmentation),
        connectivity=6,
        surface_area=True,
        anisotropy=tuple(float(r) for r in resolution_nm),
    )
    return {
        (int(min(a, b)), int(max(a, b))): float(area) * 1e-6
        for (a, b), area in areas.items()
        if a != 0 and b != 0 and a != b
    }


def segment_properties(
    segmentation: np.ndarray,
    resolution_nm: tuple[float, float, float],
    offset_zyx: tuple[int, int, int] = (0, 0, 0),
) -> dict[int, dict]:
    """Voxel count, volume (µm³), bounding box (voxels) and centroid (nm) of every segment;
    positions shifted by ``offset_zyx`` (voxels: where the array lies in a larger volume)."""
    res = np.asarray(resolution_nm, dtype=np.float64)
    offset = [int(v) for v in offset_zyx]
    stats = cc3d.statistics(np.ascontiguousarray(segmentation))
    out = {}
    for label, count in enumerate(stats["voxel_counts"]):
        if label == 0 or count == 0:
            continue
        bbox = stats["bounding_boxes"][label]
        out[label] = {
            "voxels": int(count),
            "volume_um3": float(count * np.prod(res) * 1e-9),
            "bbox_zyx": [int(s.start) + o for s, o in zip(bbox, offset)]
            + [int(s.stop) + o for s, o in zip(bbox, offset)],
            "centroid_nm": [
                float(c) for c in (np.asarray(stats["centroids"][label]) + offset) * res
            ],
        }
    return out


def build_graph(
    segmentation: np.ndarray,
    resolution_nm: tuple[float, float, float],
    synapses: Synapses | None = None,
    cable_lengths_nm: Mapping[int, float] | None = None,
    contact_labels: np.ndarray | None = None,
    offset_zyx: tuple[int, int, int] = (0, 0, 0),
) -> tuple[nx.MultiDiGraph, SynapseAssignment]:
    """The connectome graph of a label volume (z, y, x) and the synapse assignment.

    Contacts are measured on ``contact_labels`` when given (e.g. the segmentation grown
    into the unlabelled membranes between segments), else on the segmentation itself.
    ``offset_zyx`` (voxels): where the volume lies in the frame of the synapse points and
    of the reported bounding boxes and centroids (a dataset's ``roi`` offset).
    """
    offset = np.asarray([int(v) for v in offset_zyx], dtype=np.int64)
    graph = nx.MultiDiGraph(
        resolution_nm=list(map(float, resolution_nm)), offset_zyx=[int(v) for v in offset]
    )
    cable = cable_lengths_nm or {}
    for label, props in segment_properties(segmentation, resolution_nm, offset_zyx).items():
        graph.add_node(label, **props, cable_length_nm=float(cable.get(label, 0.0)))
    for (a, b), area in sorted(
        contact_areas_um2(
            segmentation if contact_labels is None else contact_labels, resolution_nm
        ).items()
    ):
        graph.add_edge(a, b, key="contact", kind="contact", area_um2=area)
    assignment = SynapseAssignment()
    if synapses is not None:
        if offset.any():
            synapses = Synapses(
                np.asarray(synapses.pre) - offset, np.asarray(synapses.post) - offset
            )
        assignment = assign_synapses(segmentation, synapses)
        for (a, b), n in sorted(assignment.counts.items()):
            graph.add_edge(a, b, key="synapse", kind="synapse", weight=int(n))
    return graph, assignment


def synapse_graph(graph: nx.MultiDiGraph) -> nx.DiGraph:
    """The directed synapse edges alone (weight = synapse count)."""
    return _edges_of_kind(graph, "synapse", "weight", nx.DiGraph())


def contact_graph(graph: nx.MultiDiGraph) -> nx.Graph:
    """The contact edges alone, undirected (area_um2)."""
    return _edges_of_kind(graph, "contact", "area_um2", nx.Graph())


def _edges_of_kind(graph: nx.MultiDiGraph, kind: str, attribute: str, out):
    out.add_nodes_from(graph.nodes)
    for a, b, data in graph.edges(data=True):
        if data["kind"] == kind:
            out.add_edge(a, b, **{attribute: data[attribute]})
    return out


def graph_summary(graph: nx.MultiDiGraph, assignment: SynapseAssignment) -> dict:
    """Counts, degree distributions and the largest components of a connectome graph."""
    syn, con = synapse_graph(graph), contact_graph(graph)
    syn_components = sorted((len(c) for c in nx.weakly_connected_components(syn)), reverse=True)
    con_components = sorted((len(c) for c in nx.connected_components(con)), reverse=True)
    reasons = Counter(reason for _, reason in assignment.unassigned)
    return {
        "segments": graph.number_of_nodes(),
        "synapses_assigned": int(sum(assignment.counts.values())),
        "synapses_unassigned": dict(sorted(reasons.items())),
        "synapse_edges": syn.number_of_edges(),
        "contact_edges": con.number_of_edges(),
        "contact_area_um2_total": float(sum(d["area_um2"] for *_, d in con.edges(data=True))),
        "synapse_out_degree_histogram": _histogram(d for _, d in syn.out_degree()),
        "synapse_in_degree_histogram": _histogram(d for _, d in syn.in_degree()),
        "contact_degree_histogram": _histogram(d for _, d in con.degree()),
        "largest_synapse_components": [c for c in syn_components[:5] if c > 1],
        "largest_contact_components": con_components[:5],
    }


def _histogram(degrees) -> dict[int, int]:
    return dict(sorted(Counter(int(d) for d in degrees).items()))


def graph_for_graphml(graph: nx.MultiDiGraph) -> nx.MultiDiGraph:
    """A copy with list attributes flattened to strings (GraphML holds scalars only)."""
    out = nx.MultiDiGraph()
    out.graph.update({k: _scalar(v) for k, v in graph.graph.items()})
    for n, data in graph.nodes(data=True):
        out.add_node(n, **{k: _scalar(v) for k, v in data.items()})
    for a, b, key, data in graph.edges(keys=True, data=True):
        out.add_edge(a, b, key=key, **data)
    return out


def _scalar(value):
    if isinstance(value, list | tuple):
        return " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return value
