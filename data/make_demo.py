"""Re-create data/demo.h5 from ../shared/data/fib25_s2_train.h5 (maintainers only).

The demo is a 100^3 voxel crop (z 60:160, y 150:250, x 0:100) of FIB-25 training_sample2
from janelia-flyem/neuroproof_examples, inside the x 0-125 part of that volume that the
developers use for training and tuning (x 125-250 is kept for measuring quality).
"""

import sys
from pathlib import Path

import h5py
import numpy as np

from ffnflow.volumes import write_volume

CROP = (slice(60, 160), slice(150, 250), slice(0, 100))


def main(source: str, target: str) -> None:
    with h5py.File(source, "r") as f:
        raw = f["raw"][CROP]
        labels = f["labels"][CROP]
    note = "FIB-25 training_sample2 crop z60:160 y150:250 x0:100; see data/LICENSE-neuroproof_examples.txt"
    attrs = {"source": "janelia-flyem/neuroproof_examples training_sample2", "note": note}
    write_volume(f"{target}:raw", raw, (10, 10, 10), attrs=attrs)
    write_volume(
        f"{target}:labels", labels.astype(np.uint32), (10, 10, 10), "segmentation", attrs=attrs
    )


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    main(
        sys.argv[1]
        if len(sys.argv) > 1
        else str(here.parents[1] / "shared/data/fib25_s2_train.h5"),
        sys.argv[2] if len(sys.argv) > 2 else str(here / "demo.h5"),
    )
