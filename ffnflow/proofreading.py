"""The agglomeration as a proofreadable graph: supervoxels plus Neuroglancer equivalences.

The resegmentation agglomeration merges the segments of ``cleaned.h5`` (the
*supervoxels*) along the pairs it accepted (``agglomeration_pairs.csv``, column
``merge``). In Neuroglancer those merges are the ``equivalences`` of a segmentation layer
showing the supervoxels: lists of supervoxel ids that are one object. Neuroglancer keeps
them as the edges of a spanning tree per object (it writes them back as id pairs), and
its split tool cuts that tree; :func:`merge_edges` gives it the agglomeration's own
merged pairs, so that a split separates what one merge decision joined. A proofreader
splits a wrong merge or joins a missed one there, and :func:`apply_equivalences` turns
the equivalences of the edited state back into a segmentation.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import fastremap
import numpy as np

from ffnflow.errors import InputError
from ffnflow.resegmentation import PairScore, apply_merges
from ffnflow.stitch import UnionFind

__all__ = ["apply_equivalences", "merge_edges", "merged_groups", "state_equivalences"]


def _union(pairs: Iterable[tuple[int, int]]) -> UnionFind:
    uf = UnionFind()
    for a, b in pairs:
        uf.union(int(a), int(b))
    return uf


def _groups(pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    members: dict[int, list[int]] = {}
    for k, root in _union(pairs).representatives().items():
        members.setdefault(root, []).append(k)
    return sorted(sorted(g) for g in members.values() if len(g) > 1)


def merged_groups(scores: Iterable[PairScore]) -> list[list[int]]:
    """Supervoxel ids merged into one segment by the agglomeration (decision points with
    ``merge``), as sorted groups of two or more ids."""
    return _groups((s.a, s.b) for s in scores if s.merge)


def merge_edges(scores: Iterable[PairScore]) -> list[tuple[int, int]]:
    """The merged pairs (decision points with ``merge``) that form a spanning forest of the
    merge graph, strongest IoU first: the equivalences Neuroglancer splits along."""
    uf = UnionFind()
    edges = []
    for s in sorted((s for s in scores if s.merge), key=lambda s: (-s.iou, s.a, s.b)):
        if uf.find(s.a) != uf.find(s.b):
            uf.union(s.a, s.b)
            edges.append((int(s.a), int(s.b)))
    return edges


def _parse_state(state: str | Path | Mapping[str, Any], what: str) -> Mapping[str, Any]:
    if isinstance(state, Mapping):
        return state
    text = str(state).strip()
    if "#!" not in text and not text.startswith("{"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise InputError(
                f"{what}: neither a Neuroglancer link (…#!{{…}}), JSON state nor a file: "
                f"{text[:80]!r}"
            )
        return _parse_state(path.read_text(), f"{what} ({path})")
    if "#!" in text:
        text = urllib.parse.unquote(text.split("#!", 1)[1])
    try:
        parsed = json.loads(text)
    except ValueError as e:
        raise InputError(f"{what}: not a JSON Neuroglancer state: {e}") from None
    if not isinstance(parsed, dict):
        raise InputError(f"{what}: a Neuroglancer state is a JSON object, got {type(parsed)}")
    return parsed


def state_equivalences(
    state: str | Path | Mapping[str, Any], layer: str = "supervoxels"
) -> list[list[int]]:
    """The equivalences of segmentation layer ``layer`` of a Neuroglancer state: a state
    (dict), its JSON text, a Neuroglancer link (``…#!{…}``) or a file holding either."""
    what = "Neuroglancer state"
    parsed = _parse_state(state, what)
    layers = parsed.get("layers", [])
    if isinstance(layers, Mapping):  # the older state format: {name: layer}
        layers = [{"name": k, **v} for k, v in layers.items() if isinstance(v, Mapping)]
    found = [x for x in layers if isinstance(x, Mapping) and x.get("name") == layer]
    if not found:
        names = [x.get("name") for x in layers if isinstance(x, Mapping)]
        raise InputError(f"{what}: no layer named {layer!r}; layers: {names}")
    groups = found[0].get("equivalences", [])
    try:
        out = [[int(v) for v in group] for group in groups]
    except (TypeError, ValueError):
        raise InputError(
            f"{what}: layer {layer!r} equivalences must be lists of segment ids, got "
            f"{str(groups)[:120]}"
        ) from None
    if any(v < 0 for g in out for v in g):
        raise InputError(f"{what}: layer {layer!r} equivalences hold a negative segment id")
    return out


def apply_equivalences(supervoxels: np.ndarray, groups: Iterable[Iterable[int]]) -> np.ndarray:
    """Merge every group of supervoxel ids of ``supervoxels`` (z, y, x) into its smallest id;
    a new uint64 array. Ids that are not in the volume are an error (a wrong state)."""
    groups = [[int(v) for v in g] for g in groups]
    present = set(fastremap.unique(np.asarray(supervoxels)).tolist())
    unknown = sorted({v for g in groups for v in g} - present - {0})
    if unknown:
        raise InputError(
            f"equivalences name {len(unknown)} segment id(s) that are not in the supervoxels, "
            f"e.g. {unknown[:5]}: the state belongs to another segmentation"
        )
    if any(0 in g for g in groups if len(g) > 1):
        raise InputError("equivalences merge segment 0 (unlabelled voxels) with a segment")
    pairs = [(g[0], v) for g in groups for v in g[1:]]
    return apply_merges(supervoxels, _union(pairs).representatives())
