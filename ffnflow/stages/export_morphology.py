"""Export the published segments' skeletons as SWC files (and meshes as OBJ or PLY), for
morphology tools (navis, NeuTu, CATMAID, neuromorpho viewers, Blender).

The skeletons and meshes are those of ``segmentation.precomputed`` (kimimaro TEASAR and
zmesh, :mod:`ffnflow.stages.publish`): coordinates in nm, x, y, z (SWC's order), in the
frame of the whole raw volume (a dataset's ``roi`` offset included), SWC radii in nm.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ffnflow.atomic import atomic_output
from ffnflow.config import dataset_config
from ffnflow.errors import InputError

log = logging.getLogger("ffnflow")

MANIFEST = "export.json"


def published_segment_ids(layer_dir: Path) -> list[int]:
    """Segment ids of a published layer (from its segment properties)."""
    properties = layer_dir / "segment_properties" / "info"
    if not properties.is_file():
        raise InputError(
            f"{layer_dir}: no segment properties; publish the segmentation again with this "
            "version of ffnflow, or give --ids"
        )
    return [int(i) for i in json.loads(properties.read_text())["inline"]["ids"]]


def run_export_morphology(
    config: dict[str, Any],
    dataset_name: str,
    results_dir: str | Path,
    out_dir: str | Path,
    ids: Sequence[int] | None = None,
    mesh_format: str | None = None,
) -> dict[str, Any]:
    """Write ``<id>.swc`` (and ``<id>.obj`` / ``<id>.ply`` with ``mesh_format``) for every
    segment (or ``ids``) of the published layer into ``out_dir``, atomically, with a
    manifest ``export.json``. Segments below the publishing dust size have no skeleton and
    mesh and are listed as skipped; an id that is not a segment is an error."""
    from cloudvolume import CloudVolume
    from cloudvolume.exceptions import SkeletonDecodeError

    dataset = dataset_config(config, dataset_name)
    layer = Path(results_dir) / "segmentation.precomputed"
    if not (layer / "info").is_file():
        raise InputError(
            f"{layer}: no published segmentation; run the workflow for {dataset_name} first"
        )
    if mesh_format not in (None, "obj", "ply"):
        raise InputError(f"export-morphology: mesh format {mesh_format!r}: use obj or ply")
    out_dir = Path(out_dir)
    if out_dir.exists() and not (out_dir / MANIFEST).is_file():
        raise InputError(
            f"{out_dir}: exists and is not an earlier export (no {MANIFEST}); choose a new folder"
        )
    segments = published_segment_ids(layer)
    wanted = list(segments) if ids is None else [int(i) for i in ids]
    unknown = sorted(set(wanted) - set(segments))
    if unknown:
        raise InputError(
            f"export-morphology: {len(unknown)} id(s) are not segments of {layer}, e.g. "
            f"{unknown[:5]}"
        )
    cv = CloudVolume(f"file://{layer.resolve()}", progress=False)
    written, skipped = [], []
    with atomic_output(out_dir) as tmp:
        tmp.mkdir()
        for segid in wanted:
            try:
                skeleton = cv.skeleton.get(segid)
            except SkeletonDecodeError:
                skipped.append(segid)
                continue
            header = (
                f"# ffnflow segment {segid} of dataset {dataset_name}: nm, x y z, "
                f"whole-volume frame (resolution z, y, x {list(dataset.resolution_nm)} nm)\n"
            )
            (tmp / f"{segid}.swc").write_text(header + skeleton.to_swc())
            if mesh_format:
                mesh = cv.mesh.get(segid)
                data = mesh.to_obj() if mesh_format == "obj" else mesh.to_ply()
                (tmp / f"{segid}.{mesh_format}").write_bytes(
                    data.encode() if isinstance(data, str) else bytes(data)
                )
            written.append(segid)
        manifest = {
            "dataset": dataset_name,
            "layer": str(layer),
            "units": "nm",
            "axes": "x, y, z",
            "segments": written,
            "skipped_without_skeleton": skipped,
            "meshes": mesh_format,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    log.info("exported %d segments to %s (%d skipped)", len(written), out_dir, len(skipped))
    return manifest
