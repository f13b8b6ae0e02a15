"""Stage: several blocks flood-filled together give each block its per-block result."""

import json

import h5py
import numpy as np
import pytest

from ffnflow.config import validate_config
from ffnflow.errors import InputError
from ffnflow.stages.seeds import run_place_seeds
from ffnflow.stages.segment import run_segment, run_segment_blocks

BLOCKS = ["z0_y0_x0", "z1_y0_x0"]


@pytest.fixture
def two_blocks(tmp_path, tiny_em):
    config = validate_config(
        {
            "datasets": {"d": {"raw": f"{tiny_em}:raw", "resolution_nm": [10, 10, 10]}},
            "blocks": {"shape_zyx": [24, 48, 48], "context_zyx": [16, 16, 16]},
            "ffn": {"max_objects": 2, "progress": False},
        }
    )
    seeds = []
    for block in BLOCKS:
        path = tmp_path / f"{block}_seeds.csv"
        run_place_seeds(config, "d", block, path)
        seeds.append(path)
    return config, seeds


@pytest.mark.parametrize("fill_workers", [0, 2])
def test_blocks_filled_together_equal_per_block_runs(tmp_path, two_blocks, fill_workers):
    config, seeds = two_blocks
    alone = [
        run_segment(config, "d", b, s, tmp_path / f"{b}_a.h5", tmp_path / f"{b}_a.json")
        for b, s in zip(BLOCKS, seeds)
    ]
    together = run_segment_blocks(
        config,
        "d",
        BLOCKS,
        seeds,
        [tmp_path / f"{b}_b.h5" for b in BLOCKS],
        [tmp_path / f"{b}_b.json" for b in BLOCKS],
        fill_workers=fill_workers,
    )
    assert sum(c["fov_evaluations"] for c in together) > 0
    for block, a, b in zip(BLOCKS, alone, together):
        assert a["fov_evaluations"] == b["fov_evaluations"]
        assert b["blocks_filled_together"] == 2 and b["fill_workers"] == fill_workers
        with (
            h5py.File(tmp_path / f"{block}_a.h5") as fa,
            h5py.File(tmp_path / f"{block}_b.h5") as fb,
        ):
            assert np.array_equal(fa["labels"][...], fb["labels"][...])
            assert dict(fa["labels"].attrs)["write_offset_zyx"].tolist() == list(
                fb["labels"].attrs["write_offset_zyx"]
            )
        origins_a = json.loads((tmp_path / f"{block}_a.json").read_text())["origins_zyx"]
        origins_b = json.loads((tmp_path / f"{block}_b.json").read_text())["origins_zyx"]
        assert origins_a == origins_b


def test_mismatched_block_and_file_lists_are_refused(tmp_path, two_blocks):
    config, seeds = two_blocks
    outputs = [tmp_path / "a.h5", tmp_path / "b.h5"], [tmp_path / "a.json", tmp_path / "b.json"]
    with pytest.raises(InputError, match="2 blocks, 1 seed files"):
        run_segment_blocks(config, "d", BLOCKS, seeds[:1], *outputs)
    assert not any(p.exists() for p in outputs[0] + outputs[1])
