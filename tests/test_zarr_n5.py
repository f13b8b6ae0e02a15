"""zarr (v2, v3, OME-Zarr) and N5 volumes: read-only inputs through ffnflow.volumes.

The arrays are written with TensorStore (and OME-Zarr group metadata by hand, as the
OME-NGFF 0.4 specification lays it out), then read back as (z, y, x) volumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts

from ffnflow.errors import InputError
from ffnflow.volumes import (
    Roi,
    create_precomputed,
    create_volume,
    open_volume,
    parse_volume_spec,
    write_region,
    write_volume,
)
from ffnflow.zarr_n5 import tensorstore_context

ZYX = np.arange(6 * 7 * 9, dtype=np.uint16).reshape(6, 7, 9)  # z, y, x


def _write(spec: dict, data: np.ndarray) -> None:
    store = ts.open(spec, create=True, context=tensorstore_context()).result()
    store[...] = data


def _zarr2(location: str, data: np.ndarray, compressor: dict | None = None) -> None:
    _write(
        {
            "driver": "zarr",
            "kvstore": location,
            "metadata": {
                "shape": list(data.shape),
                "chunks": [3] * data.ndim,
                "dtype": data.dtype.str,
                "compressor": compressor,
            },
        },
        data,
    )


def ome_zarr(path: Path, zyx: np.ndarray, scale_nm: tuple[float, float, float]) -> None:
    """An OME-Zarr 0.4 group at ``path``: axes c, z, y, x (one channel), two levels; the
    scales are written in micrometres."""
    path.mkdir(parents=True)
    (path / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"
    ]
    levels = []
    for level, step in ((0, 1), (1, 2)):
        _zarr2(f"file://{path}/{level}", zyx[None, :, ::step, ::step].copy(), {"id": "zlib"})
        scale = [1.0, scale_nm[0] / 1000, step * scale_nm[1] / 1000, step * scale_nm[2] / 1000]
        levels.append(
            {"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        )
    multiscale = {"version": "0.4", "name": "em", "axes": axes, "datasets": levels}
    (path / ".zattrs").write_text(json.dumps({"multiscales": [multiscale]}))


def test_zarr_and_n5_read_as_zyx_volumes(tmp_path, monkeypatch):
    box = Roi((1, 2, 3), (4, 3, 5))
    expect = ZYX[1:5, 2:5, 3:8]
    # zarr v2, no axis names: (z, y, x), given as a local path (relative here).
    _zarr2(f"file://{tmp_path}/plain.zarr", ZYX, {"id": "blosc", "cname": "zstd"})
    monkeypatch.chdir(tmp_path)
    vs = parse_volume_spec("plain.zarr")
    assert (vs.kind, vs.path, vs.url) == ("zarr", tmp_path / "plain.zarr", vs.url)
    assert vs.url == f"zarr://file://{tmp_path}/plain.zarr" and not vs.remote
    plain = open_volume("plain.zarr")
    assert (plain.shape, plain.dtype, plain.resolution_nm) == ((6, 7, 9), np.uint16, None)
    np.testing.assert_array_equal(plain.read(box), expect)
    np.testing.assert_array_equal(plain.read(), ZYX)

    # zarr v3 stored x, y, z with dimension names and units: transposed, resolution read.
    _write(
        {
            "driver": "zarr3",
            "kvstore": f"file://{tmp_path}/xyz.zarr",
            "metadata": {
                "shape": [9, 7, 6],
                "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [4, 4, 4]}},
                "data_type": "uint16",
                "dimension_names": ["x", "y", "z"],
            },
            "schema": {"dimension_units": ["4 nm", "4 nm", "0.04 um"]},
        },
        ZYX.transpose(2, 1, 0),
    )
    xyz = open_volume(f"zarr://file://{tmp_path}/xyz.zarr/")
    assert xyz.shape == (6, 7, 9)
    assert np.allclose(xyz.resolution_nm, (40, 4, 4))
    np.testing.assert_array_equal(xyz.read(box), expect)

    # OME-Zarr group (c, z, y, x; one channel): its full-resolution level, scales in nm.
    ome_zarr(tmp_path / "ome.zarr", ZYX, (30.0, 8.0, 8.0))
    ome = open_volume(f"{tmp_path}/ome.zarr")
    assert ome.shape == (6, 7, 9) and np.allclose(ome.resolution_nm, (30, 8, 8))
    np.testing.assert_array_equal(ome.read(box), expect)
    level1 = open_volume(f"{tmp_path}/ome.zarr/1")  # a level of the group, by its path
    assert level1.shape == (6, 4, 5) and np.allclose(level1.resolution_nm, (30, 16, 16))
    np.testing.assert_array_equal(level1.read(), ZYX[:, ::2, ::2])

    # N5 (x, y, z) with resolution and units, and N5 without them.
    for name, units in (("res", ["nm", "nm", "nm"]), ("bare", None)):
        metadata = {
            "dimensions": [9, 7, 6],
            "blockSize": [4, 4, 4],
            "dataType": "uint16",
            "compression": {"type": "gzip"},
        }
        if units:
            metadata.update(units=units, resolution=[4, 4, 40])
        _write(
            {"driver": "n5", "kvstore": f"file://{tmp_path}/em.n5/{name}", "metadata": metadata},
            ZYX.transpose(2, 1, 0),
        )
    res = open_volume(f"{tmp_path}/em.n5/res")
    assert parse_volume_spec(f"{tmp_path}/em.n5/res").kind == "n5"
    assert res.shape == (6, 7, 9) and np.allclose(res.resolution_nm, (40, 4, 4))
    np.testing.assert_array_equal(res.read(box), expect)
    bare = open_volume(f"n5://file://{tmp_path}/em.n5/bare")
    assert bare.resolution_nm is None
    np.testing.assert_array_equal(bare.read(box), expect)
    # A crop of a zarr volume reads in its own frame, as every other volume.
    np.testing.assert_array_equal(
        plain.crop(box).read(Roi((1, 1, 1), (2, 2, 2))), expect[1:3, 1:3, 1:3]
    )


def test_remote_zarr_is_read_only_and_cached(tmp_path):
    """A zarr array that is not on a local disk (TensorStore's in-process memory:// store
    standing in for a bucket): read, never written, opened once per process."""
    _zarr2("memory://bucket/em.zarr/", ZYX, {"id": "gzip", "level": 1})
    spec = "zarr://memory://bucket/em.zarr"
    vs = parse_volume_spec(spec)
    assert vs.remote and vs.path is None and vs.location == "memory://bucket/em.zarr"
    vol = open_volume(spec)
    np.testing.assert_array_equal(vol.read(Roi((0, 1, 2), (3, 3, 3))), ZYX[:3, 1:4, 2:5])
    assert open_volume(spec)._array is vol._array
    for write in (
        lambda: write_region(spec, ZYX[:3, :3, :3], (0, 0, 0)),
        lambda: write_volume(spec, ZYX, (8, 8, 8)),
        lambda: create_volume(spec, ZYX.shape, np.uint16, (8, 8, 8)),
        lambda: create_volume(f"{tmp_path}/local.zarr", ZYX.shape, np.uint16, (8, 8, 8)),
    ):
        with pytest.raises(InputError, match="read-only"):
            write()
    assert not (tmp_path / "local.zarr").exists()
    with pytest.raises(InputError, match="needs a 'precomputed://file:///abs/path' spec"):
        create_precomputed(spec, ZYX.shape, np.uint16, (8, 8, 8))


def test_bad_zarr_and_n5_inputs(tmp_path):
    def error(spec: str, match: str) -> None:
        with pytest.raises(InputError, match=match):
            open_volume(spec)

    error(f"{tmp_path}/missing.zarr", r"missing\.zarr.*nothing readable as zarr")
    error(f"n5://file://{tmp_path}/missing.n5", r"missing\.n5.*cannot open n5 array")
    error("zarr://ftp://host/em.zarr", "unsupported zarr location")
    error("zarr://file://relative/em.zarr", "must be absolute")
    (tmp_path / "group.zarr").mkdir()
    (tmp_path / "group.zarr" / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    error(f"{tmp_path}/group.zarr", "zarr group, not an array or an OME-Zarr multiscale")
    _zarr2(f"file://{tmp_path}/two.zarr", np.stack([ZYX, ZYX]))
    error(f"{tmp_path}/two.zarr", r"\(2, 6, 7, 9\) has non-spatial axes.*single-channel")
    _zarr2(f"file://{tmp_path}/flat.zarr", ZYX[0])
    error(f"{tmp_path}/flat.zarr", r"expected a 3D \(z, y, x\) array")
    _zarr2(f"file://{tmp_path}/signed.zarr", ZYX.astype(np.int8))
    error(f"{tmp_path}/signed.zarr", "unsupported dtype int8")
    # A dataset whose resolution differs from the OME-Zarr scales: an error naming both.
    from ffnflow.config import dataset_config, validate_config
    from ffnflow.stages.common import open_raw

    ome_zarr(tmp_path / "ome.zarr", ZYX, (30.0, 8.0, 8.0))
    entry = {"raw": f"{tmp_path}/ome.zarr", "resolution_nm": [8, 8, 8]}
    dataset = dataset_config(validate_config({"datasets": {"em": entry}}), "em")
    with pytest.raises(InputError, match=r"datasets\.em\.resolution_nm \[8\.0, 8\.0, 8\.0\]"):
        open_raw(dataset)
