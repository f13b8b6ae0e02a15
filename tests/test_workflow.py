"""End-to-end: the real snakemake CLI on a tiny volume, as a user adds their own dataset."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import networkx as nx
import numpy as np
import pytest

from tests.conftest import REPO

SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def snakemake(workdir: Path, configfile: Path, *targets: str) -> subprocess.CompletedProcess:
    """``snakemake --cores 2 --configfile my.yaml -- TARGETS`` from the repository, as a user
    would type it, with the outputs kept in ``workdir``."""
    cmd = [
        str(SNAKEMAKE),
        "--cores",
        "2",
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile),
        "--",
        *targets,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=900)


def planned_jobs(workdir: Path, configfiles: list[Path], *targets: str) -> set[str]:
    """Rules a dry run would execute (``snakemake -n``), from its job table."""
    cmd = [str(SNAKEMAKE), "-n", "--cores", "2", "--directory", str(workdir), "--configfile"]
    proc = subprocess.run(
        [*cmd, *map(str, configfiles), "--", *targets], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    if "Nothing to be done" in out:
        return set()
    table = out.split("Job stats:")[1].split("total")[0]
    return {line.split()[0] for line in table.splitlines()[3:] if line.strip()}


def write_user_config(path: Path, dataset: dict) -> Path:
    path.write_text(json.dumps({"datasets": {"mydata": dataset}}))  # JSON is valid YAML
    return path


@pytest.mark.slow
def test_user_dataset_runs_end_to_end(tmp_path, tiny_em):
    config = write_user_config(
        tmp_path / "my.yaml",
        {"raw": f"{tiny_em}:raw", "labels": f"{tiny_em}:labels", "resolution_nm": [10, 10, 10]},
    )
    work = tmp_path / "work"
    targets = [
        "results/mydata/metrics.json",
        "results/mydata/connectome.graphml",
        "results/mydata/report/overlays.png",
        "results/mydata/report/metrics.html",
    ]
    proc = snakemake(work, config, *targets)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = work / "results" / "mydata"
    seeds = (results / "seeds.csv").read_text().splitlines()
    assert seeds[0] == "z,y,x" and len(seeds) > 1
    with h5py.File(results / "segmentation.h5", "r") as f:
        labels = f["labels"][...]
        assert labels.dtype == np.uint64 and labels.shape == (48, 48, 48)
    with h5py.File(results / "agglomerated.h5", "r") as f:
        assert np.array_equal(f["labels"][...], labels)  # the last stage is published
    metrics = json.loads((results / "metrics.json").read_text())
    keys = {"vi_split", "vi_merge", "arand", "erl_nm", "n_segments", "fraction_segmented"}
    assert keys <= set(metrics)
    assert list(metrics["stages"]) == ["ffn", "cleaned", "agglomerated", "final"]
    assert all(keys <= set(stage) for stage in metrics["stages"].values())
    assert metrics["stages"]["final"]["arand"] == metrics["arand"]
    assert metrics["n_segments"] == len(np.unique(labels[labels > 0]))
    pairs = (results / "agglomeration_pairs.csv").read_text().splitlines()
    assert pairs[0].startswith("a,b,z,y,x,contact_faces,iou")
    graph = nx.read_graphml(results / "connectome.graphml", node_type=int)
    assert set(graph.nodes) == set(np.unique(labels[labels > 0]).tolist())
    assert (results / "report" / "overlays.png").read_bytes()[:4] == b"\x89PNG"
    assert "<table>" in (results / "report" / "metrics.html").read_text()
    counters = json.loads((results / "ffn_counters.json").read_text())["counters"]
    assert counters["fov_evaluations"] > 0 and counters["seeds_total"] == len(seeds) - 1
    block = results / "blocks" / "z0_y0_x0"
    assert (block / "benchmarks" / "segment_ffn.tsv").is_file()
    assert (block / "logs" / "segment_ffn.log").is_file()
    layer = results / "segmentation.precomputed"
    assert json.loads((layer / "info").read_text())["segment_properties"] == "segment_properties"
    properties = json.loads((layer / "segment_properties" / "info").read_text())["inline"]
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    assert properties["ids"] == [str(i) for i in ids]
    assert properties["properties"][0]["id"] == "voxels"
    assert properties["properties"][0]["values"] == counts.tolist()
    check_report(work, config, targets)
    # A second run has nothing to do.
    again = snakemake(work, config, *targets)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr

    # Changing an FFN option reruns segmentation and what follows, not seed placement.
    ffn_change = tmp_path / "ffn_change.yaml"
    ffn_change.write_text(json.dumps({"ffn": {"inference": {"segment_threshold": 0.7}}}))
    jobs = planned_jobs(work, [config, ffn_change], "results/mydata/metrics.json")
    assert jobs == {
        "segment",
        "stitch_blocks",
        "clean_up",
        "find_decision_points",
        "score_pairs",
        "agglomerate",
        "publish_segmentation",
        "evaluate",
    }, jobs
    # Changing a merge threshold reruns the merging, not the resegmentation's FFN runs.
    merge_change = tmp_path / "merge_change.yaml"
    merge_change.write_text(json.dumps({"agglomeration": {"resegmentation": {"merge_iou": 0.5}}}))
    jobs = planned_jobs(work, [config, merge_change], "results/mydata/metrics.json")
    assert jobs == {"agglomerate", "publish_segmentation", "evaluate"}, jobs
    # Changing only what evaluation uses reruns only the evaluation.
    with h5py.File(tiny_em, "a") as f:
        f["labels_v2"] = f["labels"][...]
    eval_change = write_user_config(
        tmp_path / "eval_change.yaml",
        {"raw": f"{tiny_em}:raw", "labels": f"{tiny_em}:labels_v2", "resolution_nm": [10, 10, 10]},
    )
    assert planned_jobs(work, [eval_change], "results/mydata/metrics.json") == {"evaluate"}

    # Enabling the membrane fill runs it on the finished agglomeration and publishes it.
    fill_on = tmp_path / "fill_on.yaml"
    fill_on.write_text(
        json.dumps(
            {
                **json.loads(config.read_text()),
                "agglomeration": {"membrane_fill": {"enabled": True}},
            }
        )
    )
    assert planned_jobs(work, [fill_on], "results/mydata/metrics.json") == {
        "fill_membranes",
        "publish_segmentation",
        "evaluate",
    }
    proc = snakemake(work, fill_on, "results/mydata/metrics.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with h5py.File(results / "segmentation.h5", "r") as f:
        filled = f["labels"][...]
    with h5py.File(results / "filled.h5", "r") as f:
        assert np.array_equal(f["labels"][...], filled)
    # The fill only labels unlabelled voxels; labelled ones keep their segment.
    assert np.array_equal(filled[labels > 0], labels[labels > 0])
    assert np.count_nonzero(filled) > np.count_nonzero(labels)
    metrics = json.loads((results / "metrics.json").read_text())
    assert list(metrics["stages"]) == ["ffn", "cleaned", "agglomerated", "filled", "final"]

    # Enabling the consensus adds the reverse FFN pass; the first pass is kept.
    consensus_on = tmp_path / "consensus_on.yaml"
    consensus_on.write_text(
        json.dumps({**json.loads(config.read_text()), "agglomeration": {"consensus": True}})
    )
    jobs = planned_jobs(work, [consensus_on], "results/mydata/metrics.json")
    assert {"segment", "stitch_blocks", "clean_up", "agglomerate"} <= jobs, jobs
    assert "place_seeds" not in jobs, jobs
    proc = snakemake(work, consensus_on, "results/mydata/metrics.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with h5py.File(results / "ffn.h5", "r") as f:
        first = f["labels"][...]
    with h5py.File(results / "ffn_reverse.h5", "r") as f:
        second = f["labels"][...]
    with h5py.File(results / "cleaned.h5", "r") as f:
        cleaned = f["labels"][...]
    assert np.count_nonzero(second) > 0
    # Each consensus segment lies within one label of each pass where both passes label it.
    both = (cleaned > 0) & (first > 0) & (second > 0)
    for segment in np.unique(cleaned[both]):
        voxels = both & (cleaned == segment)
        assert len(np.unique(first[voxels])) == 1 and len(np.unique(second[voxels])) == 1


def check_report(work: Path, config: Path, targets: list[str]) -> None:
    """``snakemake --report`` writes one self-contained HTML whose embedded images decode."""
    import base64
    import io
    import re

    import matplotlib.image

    report = work / "report.html"
    cmd = [str(SNAKEMAKE), "--directory", str(work), "--configfile", str(config)]
    proc = subprocess.run(
        [*cmd, "--report", str(report), "--", *targets], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    html = report.read_text()
    images = dict(
        re.findall(
            r'"filename": "([^"]+\.png)".*?"data_uri": "data:image/png;[^"]*?base64,([^"]+)"', html
        )
    )
    assert {"overlays.png", "connectome_summary.png"} <= set(images), sorted(images)
    for name, data in images.items():
        pixels = matplotlib.image.imread(io.BytesIO(base64.b64decode(data)), format="png")
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100 and pixels.std() > 0, name
    assert "metrics.html" in html and "connectome_summary.json" in html


def test_unknown_config_key_fails_before_any_job(tmp_path, tiny_em):
    config = write_user_config(
        tmp_path / "my.yaml",
        {"raw": f"{tiny_em}:raw", "resolution_nm": [10, 10, 10], "colour": "blue"},
    )
    proc = snakemake(tmp_path / "work", config, "results/mydata/seeds.csv")
    assert proc.returncode != 0
    assert "datasets.mydata" in proc.stderr and "colour" in proc.stderr
    assert not (tmp_path / "work" / "results").exists()


@pytest.mark.parametrize(
    "raw_data, expected",
    [
        (None, ["absent.h5", "does not exist"]),  # no file
        # float EM in 0..1 with the uint8 defaults: the dataset and the keys to set
        (
            np.random.default_rng(0).random((32, 32, 32), np.float32),
            ["datasets.mydata: raw", "image_mean"],
        ),
    ],
    ids=["missing", "normalisation"],
)
def test_bad_raw_volume_fails_before_any_job(tmp_path, raw_data, expected):
    """The block grid is read from the raw volume when the workflow is parsed, and its
    centre is checked against the normalisation: errors name the input, no job runs."""
    path = tmp_path / ("absent.h5" if raw_data is None else "float.h5")
    if raw_data is not None:
        with h5py.File(path, "w") as f:
            f["raw"] = raw_data
    config = write_user_config(
        tmp_path / "my.yaml", {"raw": f"{path}:raw", "resolution_nm": [10, 10, 10]}
    )
    work = tmp_path / "work"
    proc = snakemake(work, config, "results/mydata/seeds.csv")
    assert proc.returncode != 0
    assert all(text in proc.stderr for text in expected), proc.stderr[-2000:]
    assert not (work / "results").exists()


@pytest.mark.slow
def test_killed_run_keeps_finished_blocks_and_finishes_identically(tmp_path, tiny_em):
    """SIGKILL the workflow after the first block, rerun: same result as an uninterrupted run.
    The target is the stitched FFN segmentation (the stages after it only read files)."""
    dataset = {"raw": f"{tiny_em}:raw", "resolution_nm": [10, 10, 10]}
    config = tmp_path / "my.yaml"
    config.write_text(
        json.dumps(
            {
                "datasets": {"mydata": dataset},
                "blocks": {"shape_zyx": [24, 48, 48], "context_zyx": [16, 16, 16]},
            }
        )
    )
    target = "results/mydata/ffn.h5"
    reference = tmp_path / "reference"
    assert snakemake(reference, config, target).returncode == 0

    work = tmp_path / "work"
    blocks = work / "results/mydata/blocks"
    cmd = [
        str(SNAKEMAKE),
        "--cores",
        "1",
        "--directory",
        str(work),
        "--configfile",
        str(config),
        "--",
        target,
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    # With one core, the second segment job starts only after Snakemake has recorded the
    # first one as finished: kill then, in the middle of the second block.
    try:
        deadline = time.monotonic() + 300
        while len(list(blocks.glob("*/logs/segment_ffn.log"))) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.1)
        finished = {p: p.stat().st_mtime_ns for p in blocks.glob("*/ffn.h5")}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(finished) == 1, finished
    assert not (work / target).exists(), "the run finished before it could be killed"

    unlock = subprocess.run([*cmd[:-2], "--unlock"], cwd=REPO, capture_output=True, text=True)
    assert unlock.returncode == 0, unlock.stderr[-2000:]
    rerun = snakemake(work, config, target)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for path, mtime in finished.items():
        assert path.stat().st_mtime_ns == mtime, f"finished block {path} was recomputed"
    with h5py.File(work / target, "r") as a, h5py.File(reference / target, "r") as b:
        assert np.array_equal(a["labels"][...], b["labels"][...])


def test_blocks_filled_together_give_the_per_block_result(tmp_path, tiny_em):
    """ffn.blocks_per_job: one job fills the blocks together (their FOVs batched); on the
    CPU each block's labels are those of its own job, voxel for voxel."""
    dataset = {"raw": f"{tiny_em}:raw", "resolution_nm": [10, 10, 10]}
    base = {
        "datasets": {"mydata": dataset},
        "blocks": {"shape_zyx": [24, 48, 48], "context_zyx": [16, 16, 16]},
        "ffn": {"max_objects": 2},
    }
    per_block = tmp_path / "per_block.yaml"
    per_block.write_text(json.dumps(base))
    together = tmp_path / "together.yaml"
    together.write_text(json.dumps({**base, "ffn": {"max_objects": 2, "blocks_per_job": 2}}))
    target = "results/mydata/ffn.h5"
    jobs = planned_jobs(tmp_path / "plan", [together], target)
    assert "segment_mydata_part0" in jobs and "segment" not in jobs
    for name, config in (("a", per_block), ("b", together)):
        run = snakemake(tmp_path / name, config, target)
        assert run.returncode == 0, run.stderr[-3000:]
    log = (tmp_path / "b/results/mydata/logs/segment_part0_ffn.log").read_text()
    assert "blocks z0_y0_x0, z1_y0_x0 together" in log
    for path in (target, "results/mydata/blocks/z1_y0_x0/ffn.h5"):
        with h5py.File(tmp_path / "a" / path) as a, h5py.File(tmp_path / "b" / path) as b:
            assert np.array_equal(a["labels"][...], b["labels"][...]), path
    counters = json.loads(
        (tmp_path / "b/results/mydata/blocks/z1_y0_x0/ffn_counters.json").read_text()
    )
    assert counters["counters"]["blocks_filled_together"] == 2
    assert counters["counters"]["fov_evaluations"] > 0


def test_dataset_roi_gives_the_result_of_the_cropped_volume(tmp_path):
    """``datasets.NAME.roi``: the pipeline on a box of a larger volume gives, voxel for voxel,
    what it gives on that box saved as its own volume (its EM as an OME-Zarr group, so that
    zarr input runs through the workflow too); synapses stay in the whole volume's frame and
    the graph reports positions in it."""
    from ffnflow.volumes import write_volume
    from tests.test_zarr_n5 import ome_zarr

    with h5py.File(REPO / "data" / "demo.h5", "r") as f:
        raw, labels = f["raw"][:40, :60, :64], f["labels"][:40, :60, :64]
    offset, shape = (0, 6, 10), (40, 48, 48)
    box = tuple(slice(o, o + s) for o, s in zip(offset, shape))
    whole, cropped = tmp_path / "whole.h5", tmp_path / "cropped.h5"
    write_volume(f"{whole}:raw", raw, (10, 10, 10))
    ome_zarr(tmp_path / "cropped.zarr", raw[box], (10.0, 10.0, 10.0))
    for path, sel in ((whole, ...), (cropped, box)):
        write_volume(f"{path}:labels", labels[sel], (10, 10, 10), "segmentation")
    # Synapses (voxels) between points deep inside ground-truth objects (the tiny box holds
    # few segments: most are autapses, enough to see that every point lands where it
    # should), and one outside the box.
    import edt

    depth = edt.edt(np.ascontiguousarray(labels[box]).astype(np.uint32))
    deep = np.argwhere(depth >= 4)[:: max(1, int((depth >= 4).sum()) // 12)]
    rows = [(*a, *b) for a, b in zip(deep[:-1], deep[1:])]
    columns = "pre_z,pre_y,pre_x,post_z,post_y,post_x"
    for name, shift in (("whole", offset), ("cropped", (0, 0, 0))):
        lines = [columns] + [",".join(str(v + s) for v, s in zip(r, shift * 2)) for r in rows]
        if name == "whole":
            lines.append("1,1,1,2,2,2")  # outside the box
        (tmp_path / f"{name}.csv").write_text("\n".join(lines) + "\n")
    base = {"agglomeration": {"resegmentation": {"enabled": False}}}
    datasets = {
        "whole": {
            "raw": f"{whole}:raw",
            "labels": f"{whole}:labels",
            "roi": {"offset_zyx": list(offset), "shape_zyx": list(shape)},
            "synapses": str(tmp_path / "whole.csv"),
            "synapse_units": "voxels",
            "resolution_nm": [10, 10, 10],
        },
        "cropped": {
            "raw": str(tmp_path / "cropped.zarr"),
            "labels": f"{cropped}:labels",
            "synapses": str(tmp_path / "cropped.csv"),
            "synapse_units": "voxels",
            "resolution_nm": [10, 10, 10],
        },
    }
    config = tmp_path / "my.yaml"
    config.write_text(json.dumps({**base, "datasets": datasets}))
    targets = [f"results/{n}/{f}" for n in datasets for f in ("metrics.json", "connectome.graphml")]
    proc = snakemake(tmp_path / "work", config, *targets)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = tmp_path / "work" / "results"
    assert (results / "whole/seeds.csv").read_text() == (results / "cropped/seeds.csv").read_text()
    with (
        h5py.File(results / "whole/segmentation.h5") as a,
        h5py.File(results / "cropped/segmentation.h5") as b,
    ):
        assert a["labels"].shape == shape
        assert np.array_equal(a["labels"][...], b["labels"][...])
        assert list(a["labels"].attrs["roi_offset_zyx"]) == list(offset)
        assert list(b["labels"].attrs["roi_offset_zyx"]) == [0, 0, 0]
    # The published layer, its meshes and skeletons lie at the box's place in the volume.
    from cloudvolume import CloudVolume

    from ffnflow.volumes import read_volume

    layers = {n: results / n / "segmentation.precomputed" for n in datasets}
    infos = {n: json.loads((layers[n] / "info").read_text()) for n in datasets}
    assert infos["whole"]["scales"][0]["voxel_offset"] == list(offset[::-1])
    assert infos["cropped"]["scales"][0]["voxel_offset"] == [0, 0, 0]
    with h5py.File(results / "cropped/segmentation.h5") as f:
        final = f["labels"][...]
    assert np.array_equal(read_volume(f"precomputed://file://{layers['whole']}"), final)
    shift = np.asarray(offset[::-1], dtype=np.float32) * 10  # x, y, z nm
    cvs = {n: CloudVolume(f"file://{layers[n]}", progress=False) for n in datasets}
    segment = int(np.bincount(final.ravel())[1:].argmax()) + 1
    vertices = [
        np.unique(np.round(v, 2), axis=0)
        for v in (
            cvs["whole"].mesh.get(segment).vertices,
            cvs["cropped"].mesh.get(segment).vertices + shift,
        )
    ]
    np.testing.assert_allclose(vertices[0], vertices[1])
    np.testing.assert_allclose(
        cvs["whole"].skeleton.get(segment).vertices,
        cvs["cropped"].skeleton.get(segment).vertices + shift,
    )
    m_whole, m_cropped = (json.loads((results / n / "metrics.json").read_text()) for n in datasets)
    assert m_whole == m_cropped
    g_whole, g_cropped = (
        nx.read_graphml(results / n / "connectome.graphml", node_type=int) for n in datasets
    )
    assert set(g_whole.nodes) == set(g_cropped.nodes)
    synapse_edges = [
        {(a, b, d["weight"]) for a, b, d in g.edges(data=True) if d["kind"] == "synapse"}
        for g in (g_whole, g_cropped)
    ]
    assert synapse_edges[0] == synapse_edges[1] and synapse_edges[0]
    for node, data in g_cropped.nodes(data=True):
        bbox = [int(v) for v in data["bbox_zyx"].split()]
        assert [int(v) for v in g_whole.nodes[node]["bbox_zyx"].split()] == [
            v + o for v, o in zip(bbox, offset * 2)
        ]
    summary = json.loads((results / "whole/connectome_summary.json").read_text())
    assert summary["synapses_unassigned"].get("outside_volume") == 1
