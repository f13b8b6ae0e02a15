"""Stage: publish the last segmentation stage as ``segmentation.h5`` and a precomputed layer.

The precomputed layer carries, next to the labels, a mesh (zmesh marching cubes,
simplified) and a skeleton (kimimaro TEASAR) of every segment, so Neuroglancer shows the
segments in 3D, and segment properties (voxels, volume in µm³), so that its segment list
can be sorted and filtered by size (e.g. the largest segments first, for proofreading).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ffnflow.atomic import atomic_output
from ffnflow.config import dataset_config
from ffnflow.stages.common import block_grid
from ffnflow.volumes import Volume, create_precomputed, open_volume, write_region

log = logging.getLogger("ffnflow")


def chunk_shape(block_shape: tuple[int, int, int], largest: int = 64) -> tuple[int, int, int]:
    """Largest chunk edge <= ``largest`` dividing the block edge, per axis (z, y, x).

    With such chunks every block write ROI is chunk-aligned, so parallel block writers
    never share a chunk.
    """
    return tuple(max(d for d in range(1, min(b, largest) + 1) if b % d == 0) for b in block_shape)


def run_publish(
    config: dict[str, Any],
    dataset_name: str,
    source_h5: str | Path,
    segmentation_h5: str | Path,
    precomputed_dir: str | Path,
) -> None:
    """Copy the final stage's HDF5 (``labels`` gains the attribute ``roi_offset_zyx``: where
    voxel 0 lies in the raw volume) and write it as a precomputed segmentation, block by
    block."""
    dataset = dataset_config(config, dataset_name)
    offset = dataset.roi_offset_zyx
    with atomic_output(segmentation_h5) as tmp:
        shutil.copyfile(source_h5, tmp)
        with h5py.File(tmp, "r+") as f:
            f["labels"].attrs["roi_offset_zyx"] = list(offset)
    source = open_volume(f"{source_h5}:labels")
    with atomic_output(precomputed_dir) as tmp:
        url = write_precomputed_by_blocks(
            config, source, tmp, dataset.resolution_nm, "segmentation", np.uint64, offset
        )
        labels = source.read()
        n_meshes, n_skeletons = add_meshes_and_skeletons(
            url, labels, dataset.resolution_nm, offset_zyx=offset
        )
        n_properties = add_segment_properties(url, labels, dataset.resolution_nm)
    log.info("%d meshes, %d skeletons, %d segment properties", n_meshes, n_skeletons, n_properties)
    log.info("published %s -> %s and %s", source_h5, segmentation_h5, precomputed_dir)


def write_precomputed_by_blocks(
    config: dict[str, Any],
    source: Volume,
    out_dir: str | Path,
    resolution_nm: tuple[float, float, float],
    layer_type: str,
    dtype: Any,
    offset_zyx: tuple[int, int, int] = (0, 0, 0),
) -> str:
    """Write a volume as a precomputed layer in ``out_dir``, one block write ROI at a time
    (chunks aligned with the blocks), placed at ``offset_zyx`` (voxels) of the frame
    Neuroglancer shows (a dataset's ``roi`` offset); returns the layer's URL."""
    grid = block_grid(config, source.shape)
    url = f"precomputed://file://{Path(out_dir).resolve()}"
    create_precomputed(
        url,
        source.shape,
        dtype,
        resolution_nm,
        layer_type,
        chunk_zyx=chunk_shape(grid.block_shape),
        voxel_offset_zyx=offset_zyx,
    )
    for block in grid:
        write_region(url, source.read(block.write_roi), block.write_roi.offset)
    return url


def add_meshes_and_skeletons(
    url: str,
    labels: np.ndarray,
    resolution_nm: tuple[float, float, float],
    dust_voxels: int = 100,
    offset_zyx: tuple[int, int, int] = (0, 0, 0),
) -> tuple[int, int]:
    """Write meshes and skeletons of every segment (>= ``dust_voxels``) into a precomputed
    segmentation layer at ``url``; ``labels`` is the layer's content (z, y, x), whose voxel
    0 lies at ``offset_zyx`` (the layer's voxel offset)."""
    import fastremap
    import kimimaro
    import zmesh
    from cloudvolume import CloudVolume, Mesh

    # Precomputed space is x, y, z in nm with voxel i spanning [i, i + 1) * resolution.
    labels_xyz = np.ascontiguousarray(labels.transpose(2, 1, 0))
    res_xyz = tuple(float(r) for r in resolution_nm[::-1])
    cv = CloudVolume(url.removeprefix("precomputed://"), progress=False)
    cv.info["mesh"] = "mesh"
    cv.info["skeletons"] = "skeletons"
    cv.commit_info()
    cv = CloudVolume(url.removeprefix("precomputed://"), progress=False)
    cv.skeleton.meta.commit_info()

    ids, counts = fastremap.unique(labels_xyz, return_counts=True)
    keep = {int(i) for i, c in zip(ids, counts) if i != 0 and c >= dust_voxels}
    mesher = zmesh.Mesher(res_xyz)
    mesher.mesh(labels_xyz)
    # Vertices in nm of the whole frame: voxel centres, shifted by the layer's voxel offset.
    half = np.asarray(res_xyz, dtype=np.float32) / 2 + np.asarray(
        [o * r for o, r in zip(offset_zyx[::-1], res_xyz)], dtype=np.float32
    )
    meshes = []
    for segid in sorted(int(i) for i in mesher.ids()):
        if segid in keep:
            m = mesher.get(segid, normals=False, reduction_factor=10, max_error=max(res_xyz))
            meshes.append(Mesh(m.vertices + half, m.faces, None, segid=segid))
    mesher.clear()
    if meshes:
        cv.mesh.put(meshes, compress=False)
    skeletons = kimimaro.skeletonize(
        labels_xyz,
        anisotropy=res_xyz,
        dust_threshold=dust_voxels,
        fix_branching=True,
        progress=False,
        parallel=1,
    )
    for skeleton in skeletons.values():
        skeleton.vertices += half
    if skeletons:
        cv.skeleton.upload(list(skeletons.values()))
    return len(meshes), len(skeletons)


def add_segment_properties(
    url: str, labels: np.ndarray, resolution_nm: tuple[float, float, float]
) -> int:
    """Write Neuroglancer segment properties (``voxels``, ``volume_um3``) of every segment
    of ``labels`` (the layer's content, z, y, x) into the precomputed segmentation layer at
    ``url`` (its info then names them); returns how many segments."""
    import fastremap

    ids, counts = fastremap.unique(np.asarray(labels), return_counts=True)
    keep = ids != 0
    ids, counts = ids[keep], counts[keep]
    voxel_um3 = float(np.prod(resolution_nm)) * 1e-9
    properties = {
        "@type": "neuroglancer_segment_properties",
        "inline": {
            "ids": [str(int(i)) for i in ids],
            "properties": [
                {
                    "id": "voxels",
                    "type": "number",
                    "data_type": "uint32" if counts.max(initial=0) < 2**32 else "float32",
                    "description": "voxel count",
                    "values": [int(c) for c in counts],
                },
                {
                    "id": "volume_um3",
                    "type": "number",
                    "data_type": "float32",
                    "description": "volume, µm³",
                    "values": [round(float(c) * voxel_um3, 6) for c in counts],
                },
            ],
        },
    }
    root = Path(url.removeprefix("precomputed://file://"))
    (root / "segment_properties").mkdir(exist_ok=True)
    (root / "segment_properties" / "info").write_text(json.dumps(properties))
    info = json.loads((root / "info").read_text())
    info["segment_properties"] = "segment_properties"
    (root / "info").write_text(json.dumps(info))
    return len(ids)
