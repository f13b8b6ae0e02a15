"""End-to-end: the real snakemake CLI on a tiny volume, as a user adds their own dataset."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import REPO

SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def snakemake(workdir: Path, configfile: Path, *targets: str) -> subprocess.CompletedProcess:
    """``snakemake --cores 2 --configfile my.yaml -- TARGETS`` from the repository, as a user
    would type it, with the outputs kept in ``workdir``."""
    cmd = [str(SNAKEMAKE), "--cores", "2", "--directory", str(workdir), "--configfile", str(configfile), "--", *targets]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=900)


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
    proc = snakemake(work, config, "results/mydata/metrics.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = work / "results" / "mydata"
    seeds = (results / "seeds.csv").read_text().splitlines()
    assert seeds[0] == "z,y,x" and len(seeds) > 1
    with h5py.File(results / "segmentation.h5", "r") as f:
        labels = f["labels"][...]
        assert labels.dtype == np.uint64 and labels.shape == (48, 48, 48)
    with h5py.File(results / "ffn.h5", "r") as f:
        assert np.array_equal(f["labels"][...], labels)
    metrics = json.loads((results / "metrics.json").read_text())
    assert {"vi_split", "vi_merge", "arand", "n_segments", "fraction_segmented"} <= set(metrics)
    assert metrics["n_segments"] == len(np.unique(labels[labels > 0]))
    counters = json.loads((results / "ffn_counters.json").read_text())["counters"]
    assert counters["fov_evaluations"] > 0 and counters["seeds_total"] == len(seeds) - 1
    block = results / "blocks" / "z0_y0_x0"
    assert (block / "benchmarks" / "segment.tsv").is_file()
    assert (block / "logs" / "segment.log").is_file()
    assert (results / "segmentation.precomputed" / "info").is_file()
    # A second run has nothing to do.
    again = snakemake(work, config, "results/mydata/metrics.json")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_unknown_config_key_fails_before_any_job(tmp_path, tiny_em):
    config = write_user_config(
        tmp_path / "my.yaml",
        {"raw": f"{tiny_em}:raw", "resolution_nm": [10, 10, 10], "colour": "blue"},
    )
    proc = snakemake(tmp_path / "work", config, "results/mydata/seeds.csv")
    assert proc.returncode != 0
    assert "datasets.mydata" in proc.stderr and "colour" in proc.stderr
    assert not (tmp_path / "work" / "results").exists()


def test_missing_raw_file_names_the_file_and_leaves_no_output(tmp_path):
    config = write_user_config(
        tmp_path / "my.yaml", {"raw": f"{tmp_path}/absent.h5:raw", "resolution_nm": [10, 10, 10]}
    )
    work = tmp_path / "work"
    proc = snakemake(work, config, "results/mydata/seeds.csv")
    assert proc.returncode != 0
    # The block grid is read from the raw volume when the workflow is parsed.
    assert "absent.h5" in proc.stderr and "does not exist" in proc.stderr
    assert not (work / "results").exists()
