"""Shared fixtures: paths to the repository, the shared FIB-25 data and tiny volumes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
GOOGLE_NPZ = SHARED_DATA / "ffn_fib25_google.npz"
GOOGLE_CROP = SHARED_DATA / "google_ffn_crop.h5"
FIB25_TRAIN = SHARED_DATA / "fib25_s2_train.h5"
DEFAULT_CHECKPOINT = REPO / "models" / "ffn_fib25_google.pt"
_yielded_cpu = False  # this process has lowered its priority (pytest_runtest_setup)


def needs_shared(*paths: Path):
    missing = [str(p) for p in paths if not p.exists()]
    return pytest.mark.skipif(bool(missing), reason=f"shared data missing: {missing}")


@pytest.fixture
def tiny_em(tmp_path: Path) -> Path:
    """A 48^3 crop of real FIB-25 EM with labels, from the bundled demo volume."""
    import h5py

    from ffnflow.volumes import write_volume

    with h5py.File(REPO / "data" / "demo.h5", "r") as f:
        raw = f["raw"][:48, :48, :48]
        labels = f["labels"][:48, :48, :48]
    path = tmp_path / "tiny.h5"
    write_volume(f"{path}:raw", raw, (10, 10, 10))
    write_volume(f"{path}:labels", labels, (10, 10, 10), "segmentation")
    return path


def tube_image(shape=(40, 40, 40), radius=3) -> tuple[np.ndarray, np.ndarray]:
    """A bright tube along z through the middle of a dark volume: (image, tube mask)."""
    z, y, x = np.indices(shape)
    cy, cx = shape[1] // 2, shape[2] // 2
    tube = (y - cy) ** 2 + (x - cx) ** 2 <= radius**2
    return np.where(tube, 1.0, -1.0).astype(np.float32), tube


def pytest_collection_modifyitems(config, items):
    """Groups for pytest-xdist (``-n 3 --dist loadgroup``, as ``.ci/run`` runs the suite).

    The SLURM end-to-end test (group ``slurm``; it mostly waits for SLURM's status checks)
    and the parity test (``parity``: minutes of CPU in one process) are collected first,
    so that each starts at once on a worker of its own; every other test is grouped by
    its module (module fixtures are built once) and runs in order on whichever worker is
    free. Measured on 2 cores: 588-615 s for the suite with 3 workers (594 s with the
    other workers niced, below), 633 s with 2 (either grouping), 824 s on one worker."""
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))
        elif not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
    # the long ones first, so that they start at once
    first = ("parity", "slurm")

    def group(item) -> str:
        return item.get_closest_marker("xdist_group").args[0]

    items.sort(key=lambda item: first.index(group(item)) if group(item) in first else len(first))


def pytest_runtest_setup(item):
    """Under xdist, workers running other tests than parity yield the CPU to the parity
    test (niceness +5, inherited by their Snakemake runs): it is the longest and runs
    single-threaded, so it sets the suite's wall time."""
    global _yielded_cpu
    group = item.get_closest_marker("xdist_group")
    in_worker = bool(os.environ.get("PYTEST_XDIST_WORKER"))
    if in_worker and not _yielded_cpu and (group is None or group.args[0] != "parity"):
        os.nice(5)
        _yielded_cpu = True
