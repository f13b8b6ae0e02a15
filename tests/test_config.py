"""Config validation against schemas/config.schema.yaml, with defaults."""

import pytest
import yaml

from ffnflow.config import dataset_config, load_config, validate_config
from ffnflow.errors import InputError
from tests.conftest import REPO

MINIMAL = {"datasets": {"d1": {"raw": "a.h5:raw", "resolution_nm": [10, 10, 10]}}}


def test_defaults_are_filled_everywhere():
    cfg = validate_config(MINIMAL)
    assert cfg["datasets"]["d1"]["image_mean"] == 128
    assert cfg["datasets"]["d1"]["image_stddev"] == 33
    assert cfg["seeds"]["policy"] == "sobel_peaks"
    assert cfg["ffn"]["checkpoint"] == "models/ffn_fib25_google.pt"
    inference = cfg["ffn"]["inference"]
    assert inference["move_threshold"] == 0.9 and inference["min_segment_size"] == 1000
    assert MINIMAL["datasets"]["d1"].keys() == {"raw", "resolution_nm"}  # input untouched
    d = dataset_config(cfg, "d1")
    assert d.resolution_nm == (10.0, 10.0, 10.0) and d.labels is None


def test_shipped_config_is_valid():
    cfg = load_config(REPO / "config.yaml")
    assert "demo" in cfg["datasets"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"bogus": 1}, "config key \\(top level\\): Additional properties .*bogus"),
        ({"ffn": {"precison": "fp32"}}, "config key ffn: .*precison"),
        ({"ffn": {"inference": {"move_threshold": "high"}}}, "ffn.inference.move_threshold"),
        ({"ffn": {"device": "tpu"}}, "config key ffn.device"),
        ({"datasets": {"d1": {"raw": 5, "resolution_nm": [1, 1, 1]}}}, "datasets.d1.raw"),
        (
            {"datasets": {"d1": {"raw": "a.h5:r", "resolution_nm": [1, 1]}}},
            "datasets.d1.resolution_nm",
        ),
        ({"datasets": {"d1": {"raw": "a.h5:r"}}}, "datasets.d1: 'resolution_nm' is a required"),
        ({"datasets": {"bad name": {"raw": "a.h5:r", "resolution_nm": [1, 1, 1]}}}, "bad name"),
    ],
)
def test_bad_config_names_the_key(change, message):
    with pytest.raises(InputError, match=message):
        validate_config({**MINIMAL, **change})


def test_config_file_errors(tmp_path):
    with pytest.raises(InputError, match="missing.yaml: not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("datasets: [unclosed\n")
    with pytest.raises(InputError, match="broken.yaml: not valid YAML"):
        load_config(broken)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(MINIMAL))
    assert load_config(good)["datasets"]["d1"]["raw"] == "a.h5:raw"
    with pytest.raises(InputError, match="datasets.nope"):
        dataset_config(load_config(good), "nope")


def test_merge_decision_keys_are_resegmentation_options():
    from dataclasses import fields

    from ffnflow.config import MERGE_DECISION_KEYS
    from ffnflow.resegmentation import ResegmentationOptions

    assert set(MERGE_DECISION_KEYS) <= {f.name for f in fields(ResegmentationOptions)}
    schema_keys = validate_config(MINIMAL)["agglomeration"]["resegmentation"]
    assert set(MERGE_DECISION_KEYS) <= set(schema_keys)


def test_workflow_modules_parse_without_torch():
    """What rules/*.smk import when Snakemake parses the workflow (every run, dry run and
    cluster job) stays light: importing torch there costs seconds per invocation."""
    import re
    import subprocess
    import sys

    modules = set()
    for smk in (REPO / "rules").glob("*.smk"):
        modules.update(re.findall(r"^from (ffnflow[\w.]*) import", smk.read_text(), re.M))
    assert modules, "no ffnflow imports found in rules/"
    code = f"import sys; import {', '.join(sorted(modules))}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", sorted(modules)


def test_code_fingerprint_covers_imported_modules():
    from ffnflow.codehash import PACKAGE_ROOT, code_fingerprint, module_closure

    closure = {
        p.relative_to(PACKAGE_ROOT).as_posix() for p in module_closure("ffnflow.stages.segment")
    }
    assert {"stages/segment.py", "ffn/canvas.py", "ffn/predictor.py"} <= closure
    assert code_fingerprint("ffnflow.stages.segment") == code_fingerprint("ffnflow.stages.segment")
    assert code_fingerprint("ffnflow.stages.segment") != code_fingerprint("ffnflow.stages.seeds")
