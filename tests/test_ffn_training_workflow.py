"""FFN training as a stage: the CLI, the rules prepare_ffn_examples / train_ffn, fine-tuning."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from ffnflow.cli import main
from ffnflow.errors import InputError
from ffnflow.ffn.model import ConvStack3D, ModelArch, load_checkpoint, save_checkpoint
from ffnflow.ffn.training.coordinates import load_examples
from ffnflow.stages.train_ffn import run_train_ffn
from tests.test_workflow import planned_jobs, snakemake

TINY_ARCH = {"depth": 2, "features": 4, "fov_size_zyx": [9, 9, 9], "deltas_zyx": [2, 2, 2]}


def write_config(path, tiny_em, **training):
    config = {
        "datasets": {
            "mydata": {
                "raw": f"{tiny_em}:raw",
                "labels": f"{tiny_em}:labels",
                "resolution_nm": [10, 10, 10],
            }
        },
        "ffn_training": {
            "datasets": {"mydata": [{"offset_zyx": [0, 0, 0], "shape_zyx": [48, 48, 30]}]},
            "validation": {
                "dataset": "mydata",
                "offset_zyx": [0, 0, 30],
                "shape_zyx": [48, 48, 18],
                "examples": 2,
                "max_seeds": 3,
            },
            "arch": TINY_ARCH,
            "examples": {"min_object_voxels": 200},
            "steps": 6,
            "batch_size": 2,
            "checkpoint_every": 3,
            "validate_every": 6,
            "log_every": 2,
            "device": "cpu",
            **training,
        },
    }
    path.write_text(json.dumps(config))
    return path


def test_cli_prepares_examples_and_trains(tmp_path, tiny_em):
    config = write_config(tmp_path / "my.yaml", tiny_em)
    examples = tmp_path / "mydata.npz"
    assert (
        main(
            [
                "prepare-ffn-examples",
                "--config",
                str(config),
                "--dataset",
                "mydata",
                "--out",
                str(examples),
            ]
        )
        == 0
    )
    centres = load_examples(examples)
    assert len(centres.coords) and (centres.coords[:, 2] + 6 < 30).all()  # FOV + move inside x 0-30
    out = tmp_path / "out"
    args = [
        "train-ffn",
        "--config",
        str(config),
        "--examples",
        f"mydata={examples}",
        "--out",
        str(out / "ffn.pt"),
        "--log-csv",
        str(out / "log.csv"),
        "--curve",
        str(out / "curve.png"),
        "--threads",
        "1",
    ]
    assert main(args) == 0
    rows = list(csv.DictReader((out / "log.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    assert rows[-1]["val_loss"] and rows[-1]["val_arand"] and not rows[0]["val_loss"]
    loaded = load_checkpoint(out / "ffn.pt")
    assert loaded.model.arch == ModelArch(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in TINY_ARCH.items()}
    )
    # Run again: the state says the run is complete; nothing is trained twice.
    assert main(args) == 0
    assert len(list(csv.DictReader((out / "log.csv").read_text().splitlines()))) == 3


def test_validation_crop_may_not_overlap_training(tmp_path, tiny_em):
    from ffnflow.config import load_config

    config = load_config(write_config(tmp_path / "my.yaml", tiny_em))
    config["ffn_training"]["validation"]["offset_zyx"] = [0, 0, 20]
    config["ffn_training"]["validation"]["shape_zyx"] = [48, 48, 20]
    with pytest.raises(InputError, match="overlaps a training ROI"):
        run_train_ffn(
            config,
            {"mydata": tmp_path / "e.npz"},
            tmp_path / "f.pt",
            tmp_path / "l.csv",
            tmp_path / "c.png",
            tmp_path / "s",
            1,
        )


def test_fine_tuning_starts_from_the_init_checkpoint(tmp_path, tiny_em):
    from ffnflow.config import load_config

    arch = ModelArch(**{k: tuple(v) if isinstance(v, list) else v for k, v in TINY_ARCH.items()})
    torch.manual_seed(7)
    init = ConvStack3D(arch)
    save_checkpoint(
        tmp_path / "init.pt", init, {"image_mean": 128, "image_stddev": 33}, (10, 10, 10)
    )
    config = load_config(
        write_config(
            tmp_path / "my.yaml",
            tiny_em,
            init_checkpoint=str(tmp_path / "init.pt"),
            steps=1,
            learning_rate=0.0001,
            validation={},
        )
    )
    out = tmp_path / "out"
    examples = {"mydata": tmp_path / "e.npz"}
    run_train_ffn(config, examples, out / "ffn.pt", out / "log.csv", out / "c.png", out / "s", 1)
    tuned = load_checkpoint(out / "ffn.pt").model.state_dict()
    for key, value in init.state_dict().items():
        assert torch.allclose(tuned[key], value, atol=2e-4)
    config["ffn_training"]["arch"]["features"] = 8
    with pytest.raises(InputError, match="ffn_training.arch"):
        run_train_ffn(
            config, examples, out / "f2.pt", out / "l2.csv", out / "c2.png", out / "s2", 1
        )


def test_segment_uses_the_trained_model_when_configured(tmp_path, tiny_em):
    config = write_config(tmp_path / "my.yaml", tiny_em)
    use = tmp_path / "use.yaml"
    use.write_text(json.dumps({"ffn": {"checkpoint": "results/ffn_training/ffn.pt"}}))
    jobs = planned_jobs(tmp_path / "work", [config, use], "results/mydata/blocks/z0_y0_x0/ffn.h5")
    assert {"prepare_ffn_examples", "train_ffn", "segment"} <= jobs


@pytest.mark.slow
def test_train_ffn_rule_writes_checkpoint_log_curve_and_benchmark(tmp_path, tiny_em):
    config = write_config(tmp_path / "my.yaml", tiny_em, validation={})
    work = tmp_path / "work"
    proc = snakemake(work, config, "results/ffn_training/ffn.pt")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = work / "results" / "ffn_training"
    for name in (
        "ffn.pt",
        "training_log.csv",
        "loss_curve.png",
        "examples/mydata.npz",
        "benchmarks/train_ffn.tsv",
        "logs/train_ffn.log",
    ):
        assert (results / name).is_file(), name
    assert load_checkpoint(results / "ffn.pt").normalization == {
        "image_mean": 128.0,
        "image_stddev": 33.0,
    }
