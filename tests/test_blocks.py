"""Block grid geometry, stitching by overlaps, and block-wise segmentation of long tubes."""

import json

import h5py
import numpy as np
import pytest

from ffnflow.blocks import BlockGrid
from ffnflow.config import validate_config
from ffnflow.errors import InputError
from ffnflow.ffn.canvas import Canvas, InferenceOptions
from ffnflow.stages.publish import chunk_shape, run_publish
from ffnflow.stages.segment import write_block_segmentation
from ffnflow.stages.stitch import run_stitch
from ffnflow.stitch import UnionFind, overlap_matches, relabel_table
from ffnflow.volumes import read_volume, write_volume
from tests.test_canvas import OraclePredictor


def test_grid_tiles_the_volume_and_clips_read_rois():
    grid = BlockGrid((50, 70, 90), (20, 30, 40), (4, 5, 6))
    assert grid.grid_shape == (3, 3, 3) and len(grid) == 27
    cover = np.zeros((50, 70, 90), dtype=int)
    for block in grid:
        cover[block.write_roi.to_slices()] += 1
        assert block.read_roi.contains(block.write_roi)
        assert all(o >= 0 for o in block.read_roi.offset)
        assert all(e <= s for e, s in zip(block.read_roi.end, grid.volume_shape))
    assert (cover == 1).all()
    last = grid.block_by_id("z2_y2_x2")
    assert last.write_roi.offset == (40, 60, 80) and last.write_roi.shape == (10, 10, 10)
    assert last.read_roi.offset == (36, 55, 74) and last.read_roi.end == (50, 70, 90)
    assert grid.ids[0] == "z0_y0_x0" and grid.ids[1] == "z0_y0_x1"
    for g in (grid, BlockGrid((100, 100, 100), (20, 20, 20), (4, 4, 4))):
        pairs = {(a.id, b.id) for a, b in g.neighbour_pairs()}
        brute = {
            (a.id, b.id)
            for a in g
            for b in g
            if a.index < b.index and not a.read_roi.intersect(b.read_roi).empty
        }
        assert pairs == brute
    assert len(pairs) == 4 * 5 * 5 * 3 + 4 * 4 * 5 * 6 + 4 * 4 * 4 * 4  # face, edge, corner pairs
    with pytest.raises(InputError, match="z9_y0_x0"):
        grid.block_by_id("z9_y0_x0")
    with pytest.raises(InputError, match="block id"):
        grid.block_by_id("block1")


def test_overlap_matching_and_relabelling():
    a = np.zeros((10, 10, 10), np.uint64)
    b = np.zeros_like(a)
    a[:, :5] = 1
    b[:, :5] = 7  # same object
    a[:, 5:] = 2
    b[:, 5:] = 9
    b[:, 4:6, :5] = 8  # a fragment straddling 1 and 2 equally must not bridge them
    matches = overlap_matches(a, b, min_overlap_voxels=20, min_overlap_fraction=0.5)
    assert (1, 7, 450) in matches and (2, 9, 450) in matches
    assert not any(m[1] == 8 for m in matches)
    assert overlap_matches(a, b, min_overlap_voxels=451) == []
    table = relabel_table([0, 2, 11], [2, 9, 3], [(1, 2 + 7), (12, 2)])
    assert table[0] == 0 and table[1] == table[9] and table[2] == table[12]
    assert sorted(set(table.values())) == list(range(0, 2 + 9 + 3 - 2 + 1))
    uf = UnionFind()
    uf.union(5, 3)
    uf.union(3, 9)
    assert uf.find(9) == uf.find(5) == 3


def test_chunks_divide_blocks():
    assert chunk_shape((256, 50, 75)) == (64, 50, 25)


def tubes_volume(shape=(60, 60, 60)):
    """Three long tubes (along z, y and x) that cross several blocks, on a dark background."""
    z, y, x = np.indices(shape)
    tubes = [
        (y - 15) ** 2 + (x - 15) ** 2 <= 9,
        (z - 45) ** 2 + (x - 44) ** 2 <= 9,
        (z - 20) ** 2 + (y - 40) ** 2 <= 9,
    ]
    labels = np.zeros(shape, np.uint32)
    for i, tube in enumerate(tubes, 1):
        labels[tube] = i
    return labels


def test_tubes_crossing_blocks_end_up_as_one_label_each(tmp_path):
    gt = tubes_volume()
    raw = np.where(gt > 0, 200, 60).astype(np.uint8)
    raw_path = tmp_path / "tubes.h5"
    write_volume(f"{raw_path}:raw", raw, (10, 10, 10))
    config = validate_config(
        {
            "datasets": {"t": {"raw": f"{raw_path}:raw", "resolution_nm": [10, 10, 10]}},
            "blocks": {
                "shape_zyx": [20, 20, 20],
                "context_zyx": [8, 8, 8],
                "min_overlap_voxels": 10,
            },
        }
    )
    grid = BlockGrid(gt.shape, (20, 20, 20), (8, 8, 8))
    options = InferenceOptions(min_segment_size=20)
    files = {}
    for block in grid:
        image = np.where(raw[block.read_roi.to_slices()] > 128, 1.0, -1.0).astype(np.float32)
        # Seeds: every tube voxel on a coarse lattice inside the write ROI, in z, y, x order.
        seeds = [
            tuple(p - np.array(block.read_roi.offset))
            for p in np.argwhere(gt > 0)
            if block.write_roi.contains(p) and all(v % 5 == 2 for v in p)
        ]
        result = Canvas(image, OraclePredictor(), options).segment_all(seeds)
        files[block.id] = tmp_path / block.id / "ffn.h5"
        write_block_segmentation(
            files[block.id],
            result.labels,
            block,
            len(result.origins),
            result.counters,
            (10, 10, 10),
        )
    out = tmp_path / "ffn.h5"
    counters = run_stitch(config, "t", files, out, tmp_path / "c.json", tmp_path / "m.json")
    seg = read_volume(f"{out}:labels")
    assert counters["blocks"] == 27 and counters["stitch_merges"] > 0
    interior = np.zeros(gt.shape, bool)
    interior[4:-4, 4:-4, 4:-4] = True  # FOV centres need 4 voxels of context at the volume edge
    for tube_id in (1, 2, 3):
        ids = np.unique(seg[gt == tube_id])
        assert len(ids[ids > 0]) == 1, (tube_id, ids)
        assert seg[(gt == tube_id) & interior].all()
    assert len(np.unique(seg[seg > 0])) == 3
    assert not seg[gt == 0].any()
    merges = json.loads((tmp_path / "m.json").read_text())
    assert merges["segments"] == 3

    precomputed = tmp_path / "seg.precomputed"
    run_publish(config, "t", out, tmp_path / "segmentation.h5", precomputed)
    assert np.array_equal(read_volume(f"precomputed://file://{precomputed}"), seg)
    with h5py.File(tmp_path / "segmentation.h5", "r") as f:
        assert np.array_equal(f["labels"][...], seg)
