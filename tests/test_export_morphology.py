"""``ffnflow export-morphology``: SWC skeletons (and meshes) of the published segments."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cloudvolume import CloudVolume, Skeleton

from ffnflow.cli import main
from ffnflow.errors import InputError
from ffnflow.stages.export_morphology import run_export_morphology
from ffnflow.stages.publish import add_segment_properties
from tests.test_view_report import tiny_results


def published(tmp_path, properties: bool = True):
    """A results folder whose segmentation layer has two tubes (ids 1, 2) with meshes and
    skeletons, and a 4-voxel segment (id 3) too small for either."""
    labels = np.zeros((16, 24, 32), np.uint64)
    labels[2:14, 4:10, 4:28] = 1
    labels[2:14, 14:20, 4:28] = 2
    labels[0, 0, :4] = 3
    config, results, _, _ = tiny_results(tmp_path, labels)
    url = f"precomputed://file://{results}/segmentation.precomputed"
    if properties:
        assert add_segment_properties(url, labels, (20.0, 10.0, 10.0)) == 3
    return config, results


def test_swc_and_meshes_are_the_published_skeletons_and_meshes(tmp_path, capsys):
    config, results = published(tmp_path)
    info = json.loads(
        (results / "segmentation.precomputed" / "segment_properties" / "info").read_text()
    )
    volume = info["inline"]["properties"][1]
    assert volume["id"] == "volume_um3" and volume["values"][0] == pytest.approx(1728 * 2e-6)

    out = tmp_path / "swc"
    manifest = run_export_morphology(config, "d", results, out, mesh_format="obj")
    assert manifest["segments"] == [1, 2] and manifest["skipped_without_skeleton"] == [3]
    assert sorted(p.name for p in out.iterdir()) == [
        "1.obj", "1.swc", "2.obj", "2.swc", "export.json"
    ]  # fmt: skip
    cv = CloudVolume(f"file://{results}/segmentation.precomputed", progress=False)
    for segid in (1, 2):
        text = (out / f"{segid}.swc").read_text()
        assert text.startswith(f"# ffnflow segment {segid} of dataset d: nm, x y z")
        swc = Skeleton.from_swc(text)
        np.testing.assert_allclose(swc.vertices, cv.skeleton.get(segid).vertices, atol=1e-4)
        # Tube 1 runs along x at y 40-100 nm: the skeleton lies inside it.
        y = swc.vertices[:, 1]
        assert ((y > 40) & (y < 100)).all() if segid == 1 else ((y > 140) & (y < 200)).all()
        vertices = [
            line
            for line in (out / f"{segid}.obj").read_text().splitlines()
            if line.startswith("v ")
        ]
        assert len(vertices) == len(cv.mesh.get(segid).vertices)

    # Again into the same export (replaced), by the CLI, for one id and PLY meshes.
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    args = ["export-morphology", "--config", str(config_file), "--dataset", "d"]
    args += ["--results", str(results), "--out", str(out)]
    assert main([*args, "--ids", "2", "--meshes", "ply"]) == 0
    assert "wrote 1 skeletons" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["2.ply", "2.swc", "export.json"]
    assert (out / "2.ply").read_bytes().startswith(b"ply")


def test_export_morphology_refuses_what_it_cannot_do(tmp_path):
    config, results = published(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not an earlier export"):
        run_export_morphology(config, "d", results, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(InputError, match=r"1 id\(s\) are not segments.*\[7\]"):
        run_export_morphology(config, "d", results, tmp_path / "a", ids=[1, 7])
    with pytest.raises(InputError, match="use obj or ply"):
        run_export_morphology(config, "d", results, tmp_path / "b", mesh_format="stl")
    with pytest.raises(InputError, match="no published segmentation"):
        run_export_morphology(config, "d", tmp_path / "elsewhere", tmp_path / "c")
    config, results = published(tmp_path / "old", properties=False)
    with pytest.raises(InputError, match="no segment properties"):
        run_export_morphology(config, "d", results, tmp_path / "d")
    assert not any((tmp_path / n).exists() for n in "abcd")
