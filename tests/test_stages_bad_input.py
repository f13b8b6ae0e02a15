"""Every bad input gives one clear error naming the input, and leaves no output behind."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from ffnflow.config import validate_config
from ffnflow.errors import InputError
from ffnflow.ffn.model import ConvStack3D, ModelArch, save_checkpoint
from ffnflow.seeds import write_seeds_csv
from ffnflow.stages.evaluate import run_evaluate
from ffnflow.stages.seeds import run_place_seeds
from ffnflow.stages.segment import run_segment


def make_config(tmp_path: Path, raw: str, labels: str | None = None, **dataset) -> dict:
    entry = {"raw": raw, "resolution_nm": [10, 10, 10], **dataset}
    if labels:
        entry["labels"] = labels
    return validate_config({"datasets": {"d": entry}})


def h5(tmp_path: Path, name: str, **datasets) -> Path:
    path = tmp_path / name
    with h5py.File(path, "w") as f:
        for key, value in datasets.items():
            f[key] = value
    return path


def assert_no_outputs(directory: Path) -> None:
    assert not any(directory.iterdir()), list(directory.iterdir())


@pytest.mark.parametrize(
    "raw_data, spec_suffix, message",
    [
        (None, "missing.h5:raw", "missing.h5"),
        (np.zeros((8, 8, 8), np.uint8), "v.h5:nope", "nope"),
        (np.zeros((8, 8), np.uint8), "v.h5:raw", "3D"),
        (np.zeros((8, 8, 8), np.complex64), "v.h5:raw", "dtype"),
        (np.full((8, 8, 8), np.nan, np.float32), "v.h5:raw", "NaN"),
    ],
)
def test_bad_raw_volume(tmp_path, raw_data, spec_suffix, message):
    if raw_data is not None:
        h5(tmp_path, "v.h5", raw=raw_data)
    spec = f"{tmp_path}/{spec_suffix}"
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match=message) as info:
        run_place_seeds(make_config(tmp_path, spec), "d", "z0_y0_x0", out / "seeds.csv")
    assert spec.split(":")[0] in str(info.value)
    assert_no_outputs(out)


@pytest.mark.parametrize(
    "raw_data",
    [
        np.random.default_rng(0).random((24, 24, 24), np.float32),  # float EM in 0..1
        np.random.default_rng(0).integers(20000, 40000, (24, 24, 24)).astype(np.uint16),
    ],
    ids=["float01", "uint16"],
)
def test_raw_that_the_normalisation_does_not_fit_is_named(tmp_path, raw_data):
    """The uint8 defaults (image_mean 128, image_stddev 33) on other intensities: an error
    that names the dataset and the keys to set, and suggests their values."""
    path = h5(tmp_path, "v.h5", raw=raw_data)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match=r"datasets\.d: raw .*v\.h5:raw.*image_mean") as info:
        run_place_seeds(make_config(tmp_path, f"{path}:raw"), "d", "z0_y0_x0", out / "seeds.csv")
    sample = raw_data[::2, ::2, ::2].astype(np.float64)  # what the check looks at
    assert f"(about {sample.mean():.4g} / {sample.std():.4g})" in str(info.value)
    assert_no_outputs(out)
    # The same volume with its own normalisation runs.
    cfg = make_config(
        tmp_path,
        f"{path}:raw",
        image_mean=float(raw_data.mean()),
        image_stddev=float(raw_data.std()),
    )
    run_place_seeds(cfg, "d", "z0_y0_x0", out / "seeds.csv")


def test_mask_prediction_checks_the_normalisation_before_predicting(tmp_path):
    from ffnflow.stages.mask import run_predict_mask

    raw = np.random.default_rng(0).random((24, 24, 24), np.float32)
    path = h5(tmp_path, "v.h5", raw=raw)
    cfg = make_config(tmp_path, f"{path}:raw")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match=r"datasets\.d: raw .*centre of block z0_y0_x0"):
        run_predict_mask(cfg, "d", "z0_y0_x0", out / "mask.h5")
    assert_no_outputs(out)


def test_normalisation_check_leaves_padding_and_uint8_em_alone():
    from ffnflow.config import DatasetConfig
    from ffnflow.stages.common import check_normalisation

    d = DatasetConfig("d", "v.h5:raw", (10.0, 10.0, 10.0), 128.0, 33.0)
    rng = np.random.default_rng(0)
    check_normalisation(rng.normal(128, 33, (32, 32, 32)).clip(0, 255).astype(np.uint8), d)
    check_normalisation(np.zeros((32, 32, 32), np.uint8), d)  # out-of-volume zeros
    check_normalisation(np.full((32, 32, 32), 255, np.uint8), d)  # constant padding
    dark = np.zeros((32, 32, 32), np.uint8)
    dark[:4] = rng.integers(1, 60, (4, 32, 32))  # a few dark EM sections beside padding
    check_normalisation(dark, d)


def test_raw_labels_shape_mismatch(tmp_path):
    path = h5(
        tmp_path, "v.h5", raw=np.zeros((8, 8, 8), np.uint8), labels=np.zeros((8, 8, 9), np.uint32)
    )
    cfg = make_config(tmp_path, f"{path}:raw", f"{path}:labels")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match=r"datasets.d.labels .*v.h5:labels.*\(8, 8, 9\)"):
        run_place_seeds(cfg, "d", "z0_y0_x0", out / "seeds.csv")
    assert_no_outputs(out)


def test_resolution_mismatch_with_the_volume_and_the_model(tmp_path):
    path = tmp_path / "v.h5"
    with h5py.File(path, "w") as f:
        f["raw"] = np.zeros((40, 40, 40), np.uint8)
        f["raw"].attrs["resolution_nm"] = [40, 8, 8]
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match=r"resolution_nm \[10.0, 10.0, 10.0\] differs .*v.h5:raw"):
        run_place_seeds(make_config(tmp_path, f"{path}:raw"), "d", "z0_y0_x0", out / "seeds.csv")

    model = ConvStack3D(
        ModelArch(depth=1, features=2, fov_size_zyx=(5, 5, 5), deltas_zyx=(2, 2, 2))
    )
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model, {"image_mean": 128, "image_stddev": 33}, (30, 4, 4))
    ok = h5(tmp_path, "ok.h5", raw=np.zeros((20, 20, 20), np.uint8))
    cfg = make_config(tmp_path, f"{ok}:raw")
    cfg["ffn"]["checkpoint"] = str(ckpt)
    write_seeds_csv(tmp_path / "seeds.csv", np.array([[10, 10, 10]]))
    with pytest.raises(InputError, match="differs from FFN checkpoint .*m.pt"):
        run_segment(cfg, "d", "z0_y0_x0", tmp_path / "seeds.csv", out / "ffn.h5", out / "c.json")
    assert_no_outputs(out)


def test_seed_outside_volume_and_evaluation_without_labels(tmp_path):
    torch.manual_seed(0)
    model = ConvStack3D(
        ModelArch(depth=1, features=2, fov_size_zyx=(5, 5, 5), deltas_zyx=(2, 2, 2))
    )
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model, {"image_mean": 128, "image_stddev": 33}, (10, 10, 10))
    path = h5(tmp_path, "v.h5", raw=np.zeros((20, 20, 20), np.uint8))
    cfg = make_config(tmp_path, f"{path}:raw")
    cfg["ffn"]["checkpoint"] = str(ckpt)
    write_seeds_csv(tmp_path / "seeds.csv", np.array([[10, 10, 10], [10, 10, 25]]))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match=r"seeds.csv: 1 seeds lie outside block z0_y0_x0"):
        run_segment(cfg, "d", "z0_y0_x0", tmp_path / "seeds.csv", out / "ffn.h5", out / "c.json")
    with pytest.raises(InputError, match="datasets.d.labels: not configured"):
        run_evaluate(cfg, "d", f"{path}:raw", out / "metrics.json")
    assert_no_outputs(out)


def test_agglomeration_and_graph_inputs_are_named(tmp_path):
    from ffnflow.stages.agglomerate import run_clean_up, run_fill_membranes
    from ffnflow.stages.connectome import run_extract_graph
    from ffnflow.volumes import write_volume

    raw = h5(tmp_path, "raw.h5", raw=np.zeros((8, 8, 8), np.uint8))
    write_volume(f"{tmp_path}/a.h5:labels", np.ones((8, 8, 8), np.uint64), (10, 10, 10))
    write_volume(f"{tmp_path}/b.h5:labels", np.ones((8, 8, 9), np.uint64), (10, 10, 10))
    cfg = make_config(tmp_path, f"{raw}:raw")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(InputError, match=r"b\.h5 shape \(8, 8, 9\) != .*a\.h5"):
        run_clean_up(cfg, "d", tmp_path / "a.h5", out / "c.h5", out / "c.json", tmp_path / "b.h5")
    with pytest.raises(
        InputError, match=r"membrane fill: .*b\.h5 shape \(8, 8, 9\) != raw .*raw\.h5"
    ):
        run_fill_membranes(cfg, "d", tmp_path / "b.h5", out / "f.h5", out / "f.json")
    cfg = make_config(tmp_path, f"{raw}:raw", synapses=str(tmp_path / "absent.csv"))
    with pytest.raises(InputError, match="absent.csv: synapse table not found"):
        run_extract_graph(
            cfg, "d", tmp_path / "a.h5", *(out / n for n in ("g", "n", "e", "s", "p"))
        )
    assert_no_outputs(out)


def test_stage_log_keeps_everything_and_the_console_gets_warnings_and_errors(tmp_path, capfd):
    import logging

    from ffnflow.snakemake_support import logged_stage

    log_path = tmp_path / "logs" / "stage.log"
    with pytest.raises(SystemExit) as exit_info:
        with logged_stage(log_path) as log:
            log.info("started")
            logging.getLogger("ffnflow.ffn.predictor").warning("slow precision")
            raise InputError("raw 'v.h5:raw': not found")
    assert exit_info.value.code == 2
    text = log_path.read_text()
    assert "started" in text and "slow precision" in text and "not found" in text
    console = capfd.readouterr().err
    assert f"ffnflow: warning: slow precision (log: {log_path})" in console
    assert "ffnflow: error: raw 'v.h5:raw': not found" in console
    assert "started" not in console and "warning: raw" not in console


def test_dataset_roi_outside_the_volume_is_named(tmp_path):
    path = h5(tmp_path, "v.h5", raw=np.full((16, 16, 16), 128, np.uint8))
    roi = {"offset_zyx": [0, 4, 4], "shape_zyx": [16, 16, 8]}
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(
        InputError,
        match=r"datasets\.d\.roi: offset \[0, 4, 4\] shape "
        r"\[16, 16, 8\].*outside raw .*v\.h5:raw, shape \[16, 16, 16\]",
    ):
        run_place_seeds(
            make_config(tmp_path, f"{path}:raw", roi=roi), "d", "z0_y0_x0", out / "seeds.csv"
        )
    assert_no_outputs(out)
    with pytest.raises(InputError, match="roi"):
        make_config(tmp_path, f"{path}:raw", roi={"offset_zyx": [0, 0, 0], "shape_zyx": [0, 4, 4]})
