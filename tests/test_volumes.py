"""Tests for ffnflow.volumes / ffnflow.atomic (tiny arrays, local files only)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from ffnflow.atomic import atomic_output, write_json_atomic
from ffnflow.errors import InputError
from ffnflow.volumes import (
    Roi,
    create_precomputed,
    create_volume,
    open_volume,
    parse_volume_spec,
    read_volume,
    write_region,
    write_volume,
)

RES = (40.0, 8.0, 4.0)  # z, y, x nm


def _img(shape=(5, 7, 9), dtype=np.uint8) -> np.ndarray:
    return (np.arange(np.prod(shape)) % 251).astype(dtype).reshape(shape)


def _specs(tmp_path, name: str) -> list[str]:
    return [f"{tmp_path}/vol.h5:{name}", f"precomputed://file://{tmp_path}/{name}"]


def _leftovers(directory) -> list[str]:
    return [p.name for p in directory.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


# ------------------------------------------------------------------ specs / ROI


def test_parse_volume_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    vs = parse_volume_spec("sub/a.hdf5:grp/raw")
    assert (vs.kind, vs.path, vs.dataset) == ("hdf5", tmp_path / "sub" / "a.hdf5", "grp/raw")
    vs = parse_volume_spec("precomputed://file:///data/seg/")
    assert (vs.kind, str(vs.path), vs.url) == (
        "precomputed",
        "/data/seg",
        "precomputed://file:///data/seg",
    )
    vs = parse_volume_spec("precomputed://gs://bucket/em/")
    assert (vs.kind, vs.path, vs.url, vs.remote) == (
        "precomputed",
        None,
        "precomputed://gs://bucket/em",
        True,
    )
    for bad in [
        "a.zarr:raw",
        "a.h5",
        "precomputed://ftp://bucket/x",
        "precomputed://gs://",
        "precomputed://bucket/x",
        "precomputed://file://rel/x",
        "",
    ]:
        with pytest.raises(InputError, match="path.h5:dataset"):
            parse_volume_spec(bad)


def _mem_precomputed(name: str, data_zyx: np.ndarray) -> str:
    """A precomputed image in cloud-volume's in-process ``mem://`` store (a stand-in for a
    remote bucket: neither a local path nor writable through ffnflow); returns its spec."""
    from cloudvolume import CloudVolume

    info = CloudVolume.create_new_info(
        1,
        "image",
        "uint8",
        "raw",
        [4, 4, 8],
        [10, 20, 30],
        list(data_zyx.shape[::-1]),
        chunk_size=[8, 8, 8],
    )
    cv = CloudVolume(f"mem://ffnflow-test/{name}", info=info, progress=False)
    cv.commit_info()
    cv[:, :, :] = np.asfortranarray(data_zyx.transpose(2, 1, 0))
    return f"precomputed://mem://ffnflow-test/{name}"


def test_remote_precomputed_is_read_only():
    data = np.random.default_rng(0).integers(0, 255, (12, 16, 20), dtype=np.uint8)
    spec = _mem_precomputed("ro", data)
    vol = open_volume(spec)
    assert vol.shape == (12, 16, 20) and vol.resolution_nm == (8.0, 4.0, 4.0)
    np.testing.assert_array_equal(vol.read(Roi((2, 3, 4), (5, 6, 7))), data[2:7, 3:9, 4:11])
    for write in (
        lambda: write_region(spec, data[:8, :8, :8], (0, 0, 0)),
        lambda: write_volume(spec, data, (8, 4, 4)),
        lambda: create_precomputed(spec, data.shape, np.uint8, (8, 4, 4)),
    ):
        with pytest.raises(InputError, match="read-only"):
            write()
    with pytest.raises(InputError, match="cannot open precomputed volume"):
        open_volume("precomputed://mem://ffnflow-test/missing")
    # One reader per remote volume and process, with a chunk cache: a second open and
    # repeated reads of nearby ROIs reuse its info and decoded chunks.
    again = open_volume(spec)
    assert again._cv is vol._cv and vol._cv.image.lru.size > 0
    np.testing.assert_array_equal(again.read(Roi((0, 0, 0), (8, 8, 8))), data[:8, :8, :8])


def test_crop_is_a_view_in_its_own_frame(tmp_path):
    data = np.arange(10 * 12 * 14, dtype=np.uint32).reshape(10, 12, 14)
    spec = f"{tmp_path / 'a.h5'}:labels"
    write_volume(spec, data, (8, 8, 8), layer_type="segmentation")
    crop = open_volume(spec).crop(Roi((2, 3, 4), (6, 7, 8)))
    assert crop.shape == (6, 7, 8) and crop.dtype == np.uint32
    np.testing.assert_array_equal(crop.read(), data[2:8, 3:10, 4:12])
    np.testing.assert_array_equal(crop.read(Roi((1, 1, 1), (2, 3, 4))), data[3:5, 4:7, 5:9])
    np.testing.assert_array_equal(crop.crop(Roi((1, 1, 1), (2, 2, 2))).read(), data[3:5, 4:6, 5:7])
    with pytest.raises(InputError, match="outside the volume"):
        crop.read(Roi((0, 0, 0), (7, 7, 8)))
    with pytest.raises(InputError, match="outside the volume"):
        open_volume(spec).crop(Roi((5, 5, 5), (6, 6, 6)))


def test_roi():
    r = Roi((1, 2, 3), (4, 5, 6))
    assert r.end == (5, 7, 9)
    assert r.to_slices() == (slice(1, 5), slice(2, 7), slice(3, 9))
    assert r.grow(1) == Roi((0, 1, 2), (6, 7, 8))
    assert r.grow((0, 1, 2)).intersect(Roi.from_shape((5, 5, 5))) == Roi((1, 1, 1), (4, 4, 4))
    assert Roi((0, 0, 0), (2, 2, 2)).intersect(Roi((3, 3, 3), (1, 1, 1))).empty
    assert r.contains(Roi((2, 3, 4), (1, 1, 1))) and not r.contains(Roi((0, 2, 3), (1, 1, 1)))
    assert r.contains((4, 6, 8)) and not r.contains((5, 6, 8))


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("kind", [0, 1], ids=["hdf5", "precomputed"])
@pytest.mark.parametrize(
    "dtype,layer,expect",
    [
        (np.uint8, "image", np.uint8),
        (np.uint64, "segmentation", np.uint64),
        (np.uint32, "segmentation", np.uint32),
        (np.int64, "segmentation", np.uint32),
        (np.float32, "image", np.float32),
    ],
)
def test_round_trip(tmp_path, kind, dtype, layer, expect):
    spec = _specs(tmp_path, "v")[kind]
    data = _img((5, 7, 9), dtype)  # non-cubic, distinct z/y/x sizes
    write_volume(spec, data, RES, layer_type=layer, chunk_zyx=(2, 4, 4))
    vol = open_volume(spec)
    assert vol.shape == (5, 7, 9)
    assert vol.dtype == expect
    assert vol.resolution_nm == RES
    out = vol.read()
    assert out.shape == (5, 7, 9) and out.dtype == expect
    np.testing.assert_array_equal(out, data)
    # axis order: value at (z, y, x) must be z*63 + y*9 + x (mod 251 for uint8)
    assert (
        out[4, 0, 0] == data.flat[4 * 63]
        and out[0, 6, 0] == data.flat[54]
        and out[0, 0, 8] == data.flat[8]
    )
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", [0, 1], ids=["hdf5", "precomputed"])
def test_block_read(tmp_path, kind):
    spec = _specs(tmp_path, "v")[kind]
    data = _img((5, 7, 9), np.uint16)
    write_volume(spec, data, RES, chunk_zyx=(2, 3, 4))
    vol = open_volume(spec)
    np.testing.assert_array_equal(
        vol.read((slice(1, 4), slice(2, 7), slice(3, 5))), data[1:4, 2:7, 3:5]
    )
    np.testing.assert_array_equal(vol.read(Roi((2, 1, 0), (1, 3, 9))), data[2:3, 1:4, 0:9])
    np.testing.assert_array_equal(read_volume(spec, ((0, 0, 5), (5, 7, 4))), data[:, :, 5:])


def test_hdf5_attrs_and_root_resolution(tmp_path):
    spec = f"{tmp_path}/a.h5:g/raw"
    write_volume(spec, _img(), RES, attrs={"source": "test", "params": {"k": 1}})
    with h5py.File(tmp_path / "a.h5", "r") as f:
        ds = f["g/raw"]
        assert ds.attrs["axes"] == "zyx" and ds.attrs["source"] == "test"
        assert ds.attrs["params"] == '{"k": 1}' and ds.compression == "gzip"
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f.attrs["resolution_nm"] = [30, 6, 6]
        f["raw"] = _img()
    assert open_volume(f"{tmp_path}/b.h5:raw").resolution_nm == (30.0, 6.0, 6.0)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["raw"] = _img()
    assert open_volume(f"{tmp_path}/c.h5:raw").resolution_nm is None


def test_hdf5_keeps_other_datasets(tmp_path):
    path = tmp_path / "multi.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = _img()
        f["grp/keep"] = np.arange(3)
        f["grp/seg"] = np.zeros((2, 2, 2), np.uint32)
        f["grp"].attrs["note"] = "x"
    new = _img(dtype=np.uint64)
    write_volume(f"{path}:grp/seg", new, RES, layer_type="segmentation")
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["raw"][:], _img())
        np.testing.assert_array_equal(f["grp/keep"][:], np.arange(3))
        assert f["grp"].attrs["note"] == "x"
    np.testing.assert_array_equal(read_volume(f"{path}:grp/seg"), new)
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------ bad inputs


def test_bad_inputs_hdf5(tmp_path):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = _img()
        f["flat"] = np.zeros((4, 4), np.uint8)
        f["cplx"] = np.zeros((2, 2, 2), np.complex64)
        f["strs"] = np.array([[[b"a"]]], dtype="S1")
    with pytest.raises(InputError, match="missing.h5.*does not exist"):
        open_volume(f"{tmp_path}/missing.h5:raw")
    with pytest.raises(InputError, match=r"bad\.h5:nope.*datasets present: .*raw") as e:
        open_volume(f"{path}:nope")
    assert "flat" in str(e.value)
    with pytest.raises(InputError, match=r"bad\.h5:flat.*3D"):
        open_volume(f"{path}:flat")
    with pytest.raises(InputError, match=r"bad\.h5:cplx.*unsupported dtype complex64"):
        open_volume(f"{path}:cplx")
    with pytest.raises(InputError, match=r"bad\.h5:strs.*unsupported dtype"):
        open_volume(f"{path}:strs")
    vol = open_volume(f"{path}:raw")
    for roi in [
        Roi((0, 0, 0), (6, 7, 9)),
        (slice(-1, 2), slice(None), slice(None)),
        Roi((4, 6, 8), (0, 1, 1)),
    ]:
        with pytest.raises(InputError, match=r"bad\.h5:raw.*outside"):
            vol.read(roi)


def test_bad_inputs_precomputed(tmp_path):
    spec = f"precomputed://file://{tmp_path}/nothere"
    with pytest.raises(InputError, match="nothere"):
        open_volume(spec)
    good = f"precomputed://file://{tmp_path}/img"
    write_volume(good, _img(), RES)
    with pytest.raises(InputError, match=r"/img.*outside"):
        read_volume(good, Roi((0, 0, 5), (5, 7, 5)))


@pytest.mark.parametrize("kind", [0, 1], ids=["hdf5", "precomputed"])
def test_bad_write_leaves_original(tmp_path, kind):
    spec = _specs(tmp_path, "v")[kind]
    write_volume(spec, _img(), RES)
    for bad, kw, msg in [
        (np.zeros((2, 2, 2), np.complex64), {}, "unsupported dtype"),
        (np.array([[["a"]]]), {}, "unsupported dtype"),
        (np.zeros((2, 2), np.uint8), {}, "3D"),
        (np.full((2, 2, 2), -1, np.int32), {"layer_type": "segmentation"}, ">= 0"),
        (np.zeros((2, 2, 2), np.float32), {"layer_type": "segmentation"}, "integer"),
        (
            _img(),
            {"attrs": {"bad": [{"x": 1}]}} if kind == 0 else {"layer_type": "blob"},
            "bad|layer_type",
        ),
    ]:
        with pytest.raises(InputError, match=msg) as e:
            write_volume(spec, bad, RES, **kw)
        assert str(parse_volume_spec(spec)) in str(e.value)
    with pytest.raises(InputError, match="resolution_nm"):
        write_volume(spec, _img(), (1, 2))
    np.testing.assert_array_equal(read_volume(spec), _img())
    assert _leftovers(tmp_path) == []


def test_atomic_output(tmp_path):
    target = tmp_path / "sub" / "out.json"
    write_json_atomic(target, {"b": 1, "a": [1, 2]})
    assert target.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            assert (
                tmp.parent == target.parent
                and tmp.suffix == ".json"
                and tmp.name.startswith(".out.tmp-")
            )
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert target.read_text().startswith('{\n  "a"')
    d = tmp_path / "dir"
    for content in ("one", "two"):  # replacing an existing directory
        with atomic_output(d) as tmp:
            tmp.mkdir()
            (tmp / "f").write_text(content)
        assert (d / "f").read_text() == content
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------ block-wise writers


def test_region_writes(tmp_path):
    data = _img(dtype=np.uint32)
    url = f"precomputed://file://{tmp_path}/seg"
    create_precomputed(url, (5, 7, 9), np.uint32, RES, "segmentation", chunk_zyx=(2, 4, 4))
    with pytest.raises(InputError, match="already exists"):
        create_precomputed(url, (5, 7, 9), np.uint32, RES, "segmentation")
    for z in range(0, 5, 2):
        for y in range(0, 7, 4):
            for x in range(0, 9, 4):
                r = Roi((z, y, x), (2, 4, 4)).intersect(Roi.from_shape((5, 7, 9)))
                write_region(url, data[r.to_slices()].astype(np.int64), r.offset)
    np.testing.assert_array_equal(read_volume(url), data)
    assert open_volume(url).resolution_nm == RES
    with pytest.raises(InputError, match="not aligned"):
        write_region(url, data[:1, :1, :1], (1, 0, 0))
    with pytest.raises(InputError, match="losslessly"):
        write_region(url, np.full((2, 4, 4), -1, np.int64), (0, 0, 0))

    h5 = f"{tmp_path}/blk.h5:out"
    create_volume(h5, (5, 7, 9), np.uint32, RES, "segmentation")
    write_region(h5, data[1:3, 2:5, 3:9], (1, 2, 3))
    expect = np.zeros_like(data)
    expect[1:3, 2:5, 3:9] = data[1:3, 2:5, 3:9]
    np.testing.assert_array_equal(read_volume(h5), expect)
    with pytest.raises(InputError, match=r"blk\.h5:out.*outside"):
        write_region(h5, data[:2, :2, :2], (4, 0, 0))


def test_copy_roi_copies_the_box_of_every_dataset_volume(tmp_path, capsys):
    """``ffnflow copy-roi``: a remote raw volume and local labels, within the dataset's roi,
    into one HDF5 file whose printed entry gives the same volumes as the roi did."""
    import yaml

    from ffnflow.cli import main
    from ffnflow.config import dataset_config, validate_config
    from ffnflow.stages.common import open_dataset_volume

    rng = np.random.default_rng(1)
    raw = rng.integers(0, 255, (20, 24, 28), dtype=np.uint8)
    labels = rng.integers(0, 5, (20, 24, 28)).astype(np.uint32)
    write_volume(f"{tmp_path}/gt.h5:labels", labels, (8, 4, 4), layer_type="segmentation")
    entry = {
        "raw": _mem_precomputed("copy", raw),
        "labels": f"{tmp_path}/gt.h5:labels",
        "roi": {"offset_zyx": [2, 3, 4], "shape_zyx": [15, 17, 19]},
        "resolution_nm": [8, 4, 4],
        "image_mean": raw.mean(),
        "image_stddev": raw.std(),
    }
    config = {"datasets": {"cutout": entry}, "blocks": {"shape_zyx": [8, 8, 8]}}
    (tmp_path / "my.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(config, default=float))))
    out = tmp_path / "copy.h5"
    assert (
        main(
            [
                "copy-roi",
                "--config",
                str(tmp_path / "my.yaml"),
                "--dataset",
                "cutout",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = yaml.safe_load(capsys.readouterr().out)
    copy = validate_config(printed)
    box = (slice(2, 17), slice(3, 20), slice(4, 23))
    for role, data in (("raw", raw), ("labels", labels)):
        np.testing.assert_array_equal(
            open_dataset_volume(dataset_config(copy, "cutout_copy"), role).read(), data[box]
        )
        with h5py.File(out) as f:
            assert list(f[role].attrs["roi_offset_zyx"]) == [2, 3, 4]
    # A box outside the volume: an error naming it, and no file.
    entry["roi"] = {"offset_zyx": [10, 3, 4], "shape_zyx": [15, 17, 19]}
    (tmp_path / "bad.yaml").write_text(
        yaml.safe_dump(json.loads(json.dumps(config, default=float)))
    )
    assert (
        main(
            [
                "copy-roi",
                "--config",
                str(tmp_path / "bad.yaml"),
                "--dataset",
                "cutout",
                "--out",
                str(tmp_path / "bad.h5"),
            ]
        )
        != 0
    )
    assert "datasets.cutout.roi" in capsys.readouterr().err
    assert not (tmp_path / "bad.h5").exists()
