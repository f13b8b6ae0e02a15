"""The GPU acceptance script runs on the CPU (``--quick``) and writes its JSON results."""

import json
import subprocess
import sys

import pytest

from tests.conftest import FIB25_TRAIN, REPO, SHARED_DATA, needs_shared


@needs_shared(FIB25_TRAIN)
def test_gpu_acceptance_quick_throughput_on_the_cpu(tmp_path):
    run = subprocess.run(
        [
            sys.executable, str(REPO / "benchmarks" / "gpu_acceptance.py"), str(tmp_path),
            "--quick", "--sections", "env,throughput", "--volumes", "s2",
            "--data", str(SHARED_DATA), "--fill-workers", "1",
            "--b-precision", "fp32",  # CPUs without native bf16 take minutes in bf16
            "--b-variants", "batch=0,flight=1", "batch=4,flight=2,target=2",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_acceptance.json").read_text())
    assert results["sections"]["throughput"]["status"] == "ok"
    entry = results["throughput"]["fib25_s2_160x250x250"]
    a, b = entry["a_sequential_fp32"], entry["b_batched_bf16_blocks"]
    assert a["fov_evaluations"] > 0 and a["fov_per_s"] > 0
    assert b["blocks"] == 2 and b["fov_evaluations_run"] >= b["fov_evaluations_kept"] > 0
    assert b["fixed_batch"] is None and b["in_flight"] == 1 and b["feed"]["calls"] > 0
    fixed = entry["b_batched_bf16_blocks_batch4_flight2_objects2_lookahead64_target2_step8"]
    assert fixed["fixed_batch"] == 4 and fixed["mean_padded_batch"] == 4
    assert fixed["fov_evaluations_run"] >= fixed["fov_evaluations_kept"] > 0
    assert b["speedup_vs_a"] == pytest.approx(b["fov_per_s"] / a["fov_per_s"], rel=0.05, abs=0.01)
    assert (tmp_path / "gpu_acceptance.log").stat().st_size > 0
