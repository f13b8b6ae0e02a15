"""Workflow configuration: validation against ``schemas/config.schema.yaml`` with defaults.

The schema is the single description of every key; :func:`validate_config` fills in its
``default`` values (also inside each dataset) and raises :class:`InputError` naming the
offending key for unknown keys, wrong types and bad values.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from ffnflow.errors import InputError

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"

# Keys of agglomeration.resegmentation that only decide merges from the scored pairs (the
# agglomerate step), not the decision points or the local FFN runs that produce the scores.
MERGE_DECISION_KEYS = (
    "merge_iou",
    "min_consistency",
    "max_deleted",
    "large_segment_voxels",
    "min_bridge_fraction",
)


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """The configuration JSON schema (a dict)."""
    with open(path) as fh:
        return yaml.safe_load(fh)


def _fill_defaults(instance: Any, schema: dict[str, Any]) -> None:
    """Recursively set missing ``default`` values of object properties, in place."""
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(instance[key], sub)
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        for key, value in instance.items():
            if key not in schema.get("properties", {}):
                _fill_defaults(value, extra)


def validate_config(config: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate ``config`` and return a copy with defaults filled in."""
    schema = schema or load_schema()
    if not isinstance(config, dict):
        raise InputError(f"config: expected a mapping, got {type(config).__name__}")
    filled = copy.deepcopy(config)
    _fill_defaults(filled, schema)
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(filled), key=lambda e: list(e.absolute_path))
    if errors:
        lines = []
        for err in errors:
            key = ".".join(str(p) for p in err.absolute_path) or "(top level)"
            lines.append(f"config key {key}: {err.message}")
        raise InputError("invalid configuration:\n  " + "\n  ".join(lines))
    return filled


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file and validate it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path}: not found")
    with open(path) as fh:
        try:
            raw = yaml.safe_load(fh) or {}
        except yaml.YAMLError as exc:
            raise InputError(f"config file {path}: not valid YAML ({exc})") from exc
    return validate_config(raw)


@dataclass(frozen=True)
class DatasetConfig:
    """One entry of ``datasets``: volume specs, voxel size (nm, z, y, x), normalisation and
    the optional part of the volumes to process (``roi_*``, voxels, z, y, x)."""

    name: str
    raw: str
    resolution_nm: tuple[float, float, float]
    image_mean: float
    image_stddev: float
    labels: str | None = None
    mask: str | None = None
    mask_labels: str | None = None
    synapses: str | None = None
    synapse_units: str = "nm"
    # Where voxel 0 of the dataset (and of every result) lies in its volumes; (0, 0, 0)
    # and no shape without a roi.
    roi_offset_zyx: tuple[int, int, int] = (0, 0, 0)
    roi_shape_zyx: tuple[int, int, int] | None = None


def dataset_config(config: dict[str, Any], name: str) -> DatasetConfig:
    """The validated ``datasets.NAME`` entry of ``config``."""
    datasets = config.get("datasets", {})
    if name not in datasets:
        raise InputError(f"config key datasets.{name}: no such dataset (have {sorted(datasets)})")
    d = datasets[name]
    roi = d.get("roi")
    return DatasetConfig(
        name=name,
        raw=d["raw"],
        resolution_nm=tuple(float(v) for v in d["resolution_nm"]),
        image_mean=float(d.get("image_mean", 128)),
        image_stddev=float(d.get("image_stddev", 33)),
        labels=d.get("labels"),
        mask=d.get("mask"),
        mask_labels=d.get("mask_labels"),
        synapses=d.get("synapses"),
        synapse_units=d.get("synapse_units", "nm"),
        roi_offset_zyx=tuple(int(v) for v in roi["offset_zyx"]) if roi else (0, 0, 0),
        roi_shape_zyx=tuple(int(v) for v in roi["shape_zyx"]) if roi else None,
    )
