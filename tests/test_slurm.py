"""End-to-end on a real SLURM cluster: ``profiles/slurm`` submits every job with sbatch.

Skipped unless ``FFNFLOW_SLURM_TEST=1`` (CI sets it): the fixture installs SLURM and MUNGE
from Debian's packages when missing (needs root and apt-get) and starts a private one-node
cluster on localhost (tests/slurm_cluster.py), which it stops again by PID at the end.

The test runs the user-config form of the workflow on a 48^3 volume twice - locally, and with
``--workflow-profile profiles/slurm`` - and checks that every job of the SLURM run went through
sbatch (the FFN one with a GPU, all with the profile's resources) and that both runs produced
identical results.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import REPO

SNAKEMAKE = Path(sys.executable).with_name("snakemake")
TARGET = "results/mydata/metrics.json"

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("FFNFLOW_SLURM_TEST") != "1",
        reason="SLURM end-to-end test: set FFNFLOW_SLURM_TEST=1 (installs and starts SLURM, root)",
    ),
]


@pytest.fixture(scope="session")
def slurm_cluster():
    from tests.slurm_cluster import SlurmCluster, SlurmError

    # Not under pytest's basetemp: MUNGE runs as user `munge` and must reach its socket,
    # and pytest's temporary folders are private (0700).
    base = Path(tempfile.mkdtemp(prefix="ffnflow-slurm-"))
    cluster = SlurmCluster(base)
    try:
        cluster.start()
    except SlurmError as e:
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"could not start a SLURM cluster: {e}")
    yield cluster
    cluster.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_em_session(tmp_path_factory) -> Path:
    """The same 48^3 crop as conftest's ``tiny_em``, once per session."""
    from ffnflow.volumes import write_volume

    with h5py.File(REPO / "data" / "demo.h5", "r") as f:
        raw = f["raw"][:48, :48, :48]
        labels = f["labels"][:48, :48, :48]
    path = tmp_path_factory.mktemp("slurm_data") / "tiny.h5"
    write_volume(f"{path}:raw", raw, (10, 10, 10))
    write_volume(f"{path}:labels", labels, (10, 10, 10), "segmentation")
    return path


def run_snakemake(args: list[str], env: dict) -> subprocess.CompletedProcess:
    cmd = [str(SNAKEMAKE), *args]
    env = {**env, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        cmd, check=False, cwd=REPO, capture_output=True, text=True, env=env, timeout=1200
    )


def read_labels(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["labels"][...]


def job_logs(work: Path, n: int = 3000) -> str:
    """The SLURM jobs' own logs (snakemake's output inside each job)."""
    logs = sorted((work / ".snakemake" / "slurm_logs").rglob("*.log"))
    return "\n".join(
        f"--- {p.relative_to(work)} ---\n{p.read_text(errors='replace')[-n:]}" for p in logs
    )


def without_timings(value):
    """A JSON value without its run-time dependent entries (wall_s, fov_per_s, ...)."""
    if isinstance(value, dict):
        return {
            k: without_timings(v) for k, v in value.items() if not (k.endswith("_s") or "time" in k)
        }
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def test_slurm_profile_runs_every_job_through_sbatch(slurm_cluster, tiny_em_session, tmp_path):
    dataset = {
        "raw": f"{tiny_em_session}:raw",
        "labels": f"{tiny_em_session}:labels",
        "resolution_nm": [10, 10, 10],
    }
    config = tmp_path / "my.yaml"
    config.write_text(json.dumps({"datasets": {"mydata": dataset}}))  # JSON is valid YAML
    venv_bin = str(Path(sys.executable).parent)
    env = slurm_cluster.env(extra_path=[venv_bin])  # jobs inherit it (sbatch --export=ALL)

    # Reference: the same request run locally (default workflow profile), alongside the
    # SLURM run, which mostly waits for status checks.
    local = tmp_path / "local"
    local_log = tmp_path / "local_run.log"
    with local_log.open("w") as log_file:
        local_run = subprocess.Popen(
            [str(SNAKEMAKE), "--cores", "2", "--directory", str(local), "--configfile",
             str(config), "--", TARGET],
            cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT, text=True,
            env={**env, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        work = tmp_path / "slurm"
        t0 = time.monotonic()
        proc = run_snakemake(
            [
                "--workflow-profile",
                "profiles/slurm",
                "--directory",
                str(work),
                "--configfile",
                str(config),
                # test-only speed-ups and evidence; everything else comes from the profile.
                # The plugin checks N s after a submission, then 10 s later each time no
                # job has finished: with N = 4 a job of up to 18 s (here: 8-17 s, 3-5 s of
                # them Snakemake starting inside the job) is seen at 18 s, not at 33-36 s.
                "--slurm-init-seconds-before-status-checks",
                "4",
                "--slurm-keep-successful-logs",
                "--latency-wait",
                "5",
                "--",
                TARGET,
            ],
            env,
        )
    except BaseException:
        local_run.kill()
        raise
    slurm_s = time.monotonic() - t0
    local_run.wait(timeout=1200)
    local_out = local_log.read_text()
    assert local_run.returncode == 0, local_out[-3000:]
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{out[-4000:]}\n{job_logs(work)}\n{slurm_cluster.log_tail()}"
    print(f"\nSLURM run: {slurm_s:.0f} s; cluster daemons {slurm_cluster.pids}")

    # Every job went through sbatch: snakemake reports a SLURM job id for each job it ran
    # remotely (`rule X:`; `localrule X:` for rules declared local), slurmctld logged their
    # submission and still lists them (MinJobAge) as COMPLETED, with comments naming the rules.
    ran = re.findall(r"^(local)?rule (\w+):$", out, re.MULTILINE)
    remote = sorted(rule for local, rule in ran if not local)
    ran_locally = re.findall(r"^localrule (\w+):$", local_out, re.MULTILINE)
    assert sorted(rule for _, rule in ran) == sorted(ran_locally)  # the same jobs as locally
    assert "segment" in remote, ran
    reported = re.findall(r"has been submitted with SLURM jobid (\d+)", out)
    assert len(reported) == len(remote), out[-4000:]
    assert set(reported) <= set(slurm_cluster.submitted_ids())
    jobs = {j["id"]: j for j in slurm_cluster.jobs()}
    assert set(reported) <= set(jobs), jobs
    by_rule = {}
    for jid in reported:
        job = jobs[jid]
        assert job["state"] == "COMPLETED", job
        rule = re.match(r"rule_(\w+?)(_wildcards_.*)?$", job["comment"]).group(1)
        by_rule.setdefault(rule, []).append(jid)
    assert sorted(r for r, ids in by_rule.items() for _ in ids) == remote, jobs
    # The FFN job asked SLURM for a GPU through its resources (--gpus=1) and got one; the
    # profile's resources are in effect (set-resources for segment, default-resources else).
    gpu_rules = {"segment": "8000M", "score_pairs": "4000M"}  # the FFN runs: rule -> mem_mb
    for rule in set(gpu_rules) & set(by_rule):
        details = slurm_cluster.job_details(by_rule[rule][0])
        assert re.search(r"TresPerJob=gres:gpu:1\b", details), details  # requested
        assert re.search(r"JOB_GRES=gpu:1\b", details), details  # allocated
        assert "TimeLimit=04:00:00" in details, details
        assert f"MinMemoryNode={gpu_rules[rule]}" in details, details
    for rule in set(by_rule) - set(gpu_rules):
        details = slurm_cluster.job_details(by_rule[rule][0])
        assert "gpu" not in details and "TimeLimit=01:00:00" in details, details
    # The SLURM logs (kept here with --slurm-keep-successful-logs) are where the plugin puts them.
    slurm_logs = {p.stem for p in (work / ".snakemake" / "slurm_logs").rglob("*.log")}
    assert set(reported) <= slurm_logs, slurm_logs

    # Same results as the local run.
    ref, res = local / "results" / "mydata", work / "results" / "mydata"
    assert (res / "seeds.csv").read_text() == (ref / "seeds.csv").read_text()
    labels = read_labels(res / "segmentation.h5")
    assert labels.shape == (48, 48, 48) and labels.dtype == np.uint64
    assert np.array_equal(labels, read_labels(ref / "segmentation.h5"))
    assert np.array_equal(read_labels(res / "ffn.h5"), read_labels(ref / "ffn.h5"))
    assert json.loads((res / "metrics.json").read_text()) == json.loads(
        (ref / "metrics.json").read_text()
    )
    counters = without_timings(json.loads((res / "ffn_counters.json").read_text()))
    assert counters == without_timings(json.loads((ref / "ffn_counters.json").read_text()))
    assert list(res.rglob("logs/segment_ffn.log")) and list(res.rglob("benchmarks/segment_ffn.tsv"))
