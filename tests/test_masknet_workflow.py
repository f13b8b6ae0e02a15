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


def test_seeds_depend_on_mask_h5_when_enabled(tmp_path, tiny_em):
    model = tmp_path / "m.pt"
    arch = MaskNetArch(features=2, levels=2)
    save_masknet(model, MaskNet(arch), {"image_mean": 128, "image_stddev": 33}, (10, 10, 10))
    on = write_config(tmp_path / "on.yaml", tiny_em, {"checkpoint": str(model)})
    jobs = planned_jobs(tmp_path / "work", [on], "results/mydata/seeds.csv")
    assert {"predict_mask", "gather_mask", "place_seeds"} <= jobs


def test_seeds_do_not_depend_on_mask_h5_when_disabled(tmp_path, tiny_em):
    off = write_config(tmp_path / "off.yaml", tiny_em, {"enabled": False}, "sobel_peaks")
    jobs = planned_jobs(tmp_path / "work", [off], "results/mydata/seeds.csv")
    assert jobs == {"place_seeds", "gather_seeds"}


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
    # A threshold change redoes the seeds and the section rule of mask.h5, not the prediction.
    change = tmp_path / "threshold.yaml"
    change.write_text(json.dumps({"masknet": {"exclude_threshold": 0.7}}))
    assert planned_jobs(work, [config, change], "results/mydata/seeds.csv") == {
        "gather_mask",
        "place_seeds",
        "gather_seeds",
    }
    change.write_text(json.dumps({"masknet": {"seed_max_local_boundary": 0.2}}))
    assert planned_jobs(work, [config, change], "results/mydata/seeds.csv") == {
        "place_seeds",
        "gather_seeds",
    }


def _segment_takes_the_mask():
    import inspect

    from ffnflow.stages.segment import run_segment

    return "mask_h5" in inspect.signature(run_segment).parameters


@pytest.mark.slow
@pytest.mark.skipif(not MASKNET_MODEL.exists(), reason="no shipped mask net model")
@pytest.mark.skipif(not _segment_takes_the_mask(), reason="rule segment does not read mask.h5 yet")
def test_segmentation_leaves_excluded_voxels_unlabelled(tmp_path, tiny_em):
    with h5py.File(tiny_em, "a") as f:
        f["raw"][24] = 220  # a blank section
    config = write_config(tmp_path / "my.yaml", tiny_em)
    work = tmp_path / "work"
    proc = snakemake(work, config, "results/mydata/metrics.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = work / "results" / "mydata"
    with h5py.File(results / "mask.h5", "r") as f:
        excluded = f["exclude"][...] >= 128  # masknet.exclude_threshold 0.5
    with h5py.File(results / "segmentation.h5", "r") as f:
        labels = f["labels"][...]
    assert excluded[24].mean() > 0.9
    assert labels.any() and not labels[excluded].any()
    # The segmentation reads mask.h5: a threshold change redoes seeds and segmentation.
    change = tmp_path / "threshold.yaml"
    change.write_text(json.dumps({"masknet": {"exclude_threshold": 0.7}}))
    jobs = planned_jobs(work, [config, change], "results/mydata/metrics.json")
    assert {"place_seeds", "segment"} <= jobs and "predict_mask" not in jobs
