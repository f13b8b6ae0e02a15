"""Reading model checkpoints (``.pt`` dicts saved with torch.save), with clear errors."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ffnflow.errors import InputError


def load_payload(path: str | Path, what: str, required: Iterable[str], hint: str = "") -> dict:
    """The checkpoint dict at ``path`` (on the CPU, weights only), checked for ``required``
    keys; errors name ``what`` ("FFN checkpoint", ...) and the path, plus ``hint``."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {path}: not found{hint}")
    try:
        payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise InputError(f"{what} {path}: cannot be read ({exc})") from exc
    missing = [k for k in required if k not in payload]
    if missing:
        raise InputError(f"{what} {path}: missing keys {missing}")
    return payload


def payload_resolution(payload: dict) -> tuple[float, float, float] | None:
    """The voxel size (nm, z, y, x) a checkpoint records, or None."""
    res = payload.get("resolution_nm")
    return tuple(float(v) for v in res) if res is not None else None
