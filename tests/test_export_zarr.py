"""``ffnflow export-zarr``: a segmentation as an OME-Zarr label image, read back with
ffnflow's own zarr reader (TensorStore)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ffnflow.cli import main
from ffnflow.config import validate_config
from ffnflow.errors import InputError
from ffnflow.stages import export_zarr
from ffnflow.stages.export_zarr import pyramid_steps, run_export_zarr
from ffnflow.volumes import open_volume, write_volume


def test_pyramid_steps_halve_the_finest_axes_until_the_volume_is_small():
    assert pyramid_steps((160, 250, 125), (10, 10, 10)) == [(1, 1, 1), (2, 2, 2)]
    assert pyramid_steps((100, 100, 100), (10, 10, 10)) == [(1, 1, 1)]
    # 40 nm sections, 8 nm pixels: y, x first, z too once they are within 1.5x of it.
    assert pyramid_steps((100, 1000, 1000), (40, 8, 8)) == [
        (1, 1, 1), (1, 2, 2), (1, 4, 4), (2, 8, 8)
    ]  # fmt: skip
    assert len(pyramid_steps((4000, 4000, 4000), (10, 10, 10))) == 5  # at most 5 levels


def test_export_zarr_writes_every_level_block_by_block(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(export_zarr, "CHUNK", 4)  # levels on a tiny volume
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 50, (16, 24, 32)).astype(np.uint64)
    labels[0, 0, 0] = 2**40  # needs uint64
    write_volume(f"{tmp_path}/seg.h5:labels", labels, (20, 10, 10), "segmentation")
    write_volume(f"{tmp_path}/raw.h5:raw", np.zeros((30, 40, 50), np.uint8), (20, 10, 10))
    entry = {
        "raw": f"{tmp_path}/raw.h5:raw",
        "resolution_nm": [20, 10, 10],
        "roi": {"offset_zyx": [2, 4, 6], "shape_zyx": [16, 24, 32]},
    }
    # Blocks of 10 voxels: level offsets (steps 2 and 4) do not fall on block edges.
    config = validate_config({"datasets": {"d": entry}, "blocks": {"shape_zyx": [10, 10, 10]}})
    out = tmp_path / "seg.ome.zarr"
    multiscale = run_export_zarr(config, "d", tmp_path / "seg.h5", out)
    steps = pyramid_steps(labels.shape, (20, 10, 10))
    assert steps == [(1, 1, 1), (1, 2, 2), (2, 4, 4), (4, 8, 8)]
    attrs = json.loads((out / ".zattrs").read_text())
    assert attrs["multiscales"][0] == multiscale and "image-label" in attrs
    for level, step in enumerate(steps):
        transforms = multiscale["datasets"][level]["coordinateTransformations"]
        assert transforms[0]["scale"] == [20.0 * step[0], 10.0 * step[1], 10.0 * step[2]]
        assert transforms[1]["translation"] == [40.0, 40.0, 60.0]  # roi offset, nm
        volume = open_volume(f"{out}/{level}")
        assert volume.dtype == np.uint64
        assert volume.resolution_nm == tuple(transforms[0]["scale"])
        expect = labels[:: step[0], :: step[1], :: step[2]]
        np.testing.assert_array_equal(volume.read(), expect)
    np.testing.assert_array_equal(open_volume(str(out)).read(), labels)  # the group: level 0

    # The CLI replaces an earlier export; anything else at --out is refused, untouched.
    (tmp_path / "config.json").write_text(json.dumps(config))
    args = ["export-zarr", "--config", str(tmp_path / "config.json"), "--dataset", "d"]
    args += ["--segmentation", str(tmp_path / "seg.h5")]
    assert main([*args, "--out", str(out)]) == 0
    assert "4 levels" in capsys.readouterr().out
    (tmp_path / "mine").mkdir()
    assert main([*args, "--out", str(tmp_path / "mine")]) != 0
    assert "is not a zarr group" in capsys.readouterr().err
    assert list((tmp_path / "mine").iterdir()) == []
    write_volume(f"{tmp_path}/float.h5:labels", labels.astype(np.float32), (20, 10, 10))
    with pytest.raises(InputError, match="float32 is not an unsigned label type"):
        run_export_zarr(config, "d", tmp_path / "float.h5", tmp_path / "f.zarr")
