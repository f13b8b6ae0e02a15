"""The mask net inside the workflow: rules predict_mask, gather_mask, train_masknet."""

import json

import h5py
import numpy as np
import pytest

from ffnflow.masknet.model import MaskNet, MaskNetArch, save_masknet
from tests.conftest import REPO
from tests.test_workflow import planned_jobs, snakemake

MASKNET_MODEL = REPO / "models" / "masknet_fib25.pt"


def write_config(path, tiny_em, masknet=None, seeds_policy="masknet_peaks", **extra):
    config = {
        "datasets": {
            "mydata": {
                "raw": f"{tiny_em}:raw",
                "labels": f"{tiny_em}:labels",
                "resolution_nm": [10, 10, 10],
            }
        },
        "seeds": {"policy": seeds_policy},
        "masknet": {"enabled": True, **(masknet or {})},
        **extra,
    }
    path.write_text(json.dumps(config))
    return path


def test_missing_masknet_checkpoint_is_named_before_any_job(tmp_path, tiny_em):
    config = write_config(
        tmp_path / "my.yaml", tiny_em, {"checkpoint": str(tmp_path / "absent.pt")}
    )
    proc = snakemake(tmp_path / "work", config, "results/mydata/seeds.csv")
    assert proc.returncode != 0
    assert "absent.pt" in proc.stderr + proc.stdout
    assert not (tmp_path / "work" / "results").exists()


def test_masknet_peaks_without_the_mask_net_is_a_config_error(tmp_path, tiny_em):
    config = write_config(tmp_path / "my.yaml", tiny_em, {"enabled": False})
    proc = snakemake(tmp_path / "work", config, "results/mydata/seeds.csv")
    assert proc.returncode != 0
    assert "seeds.policy" in proc.stderr and "masknet.enabled" in proc.stderr


def test_seeds_depend_on_mask_h5_only_when_enabled(tmp_path, tiny_em):
    work = tmp_path / "work"
    model = tmp_path / "m.pt"
    save_masknet(
        model,
        MaskNet(MaskNetArch(features=2, levels=2)),
        {"image_mean": 128, "image_stddev": 33},
        (10, 10, 10),
    )
    on = write_config(tmp_path / "on.yaml", tiny_em, {"checkpoint": str(model)})
    assert {"predict_mask", "gather_mask", "place_seeds"} <= planned_jobs(
        work, [on], "results/mydata/seeds.csv"
    )
    off = write_config(tmp_path / "off.yaml", tiny_em, {"enabled": False}, "sobel_peaks")
    assert planned_jobs(work, [off], "results/mydata/seeds.csv") == {"place_seeds", "gather_seeds"}


@pytest.mark.slow
@pytest.mark.skipif(not MASKNET_MODEL.exists(), reason="no shipped mask net model")
def test_mask_h5_and_seeds_from_the_workflow(tmp_path, tiny_em):
    config = write_config(
        tmp_path / "my.yaml",
        tiny_em,
        blocks={"shape_zyx": [24, 48, 48], "context_zyx": [16, 16, 16]},
    )
    work = tmp_path / "work"
    proc = snakemake(work, config, "results/mydata/seeds.csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = work / "results" / "mydata"
    with h5py.File(results / "mask.h5", "r") as f:
        assert set(f) == {"boundary", "exclude"}
        assert f["boundary"].shape == f["exclude"].shape == (48, 48, 48)
        assert f["boundary"].dtype == np.uint8
        exclude = f["exclude"][...] >= 128
    seeds = np.loadtxt(results / "seeds.csv", delimiter=",", skiprows=1, dtype=int).reshape(-1, 3)
    assert len(seeds) and not exclude[tuple(seeds.T)].any()
    for block in ("z0_y0_x0", "z1_y0_x0"):
        assert (results / "blocks" / block / "benchmarks" / "predict_mask.tsv").is_file()
        assert (results / "blocks" / block / "logs" / "predict_mask.log").is_file()
    # A threshold change redoes the seeds, not the prediction.
    change = tmp_path / "threshold.yaml"
    change.write_text(json.dumps({"masknet": {"exclude_threshold": 0.7}}))
    assert planned_jobs(work, [config, change], "results/mydata/seeds.csv") == {
        "place_seeds",
        "gather_seeds",
    }
