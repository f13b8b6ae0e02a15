"""Evaluation helpers on tiny synthetic volumes."""

import numpy as np
import pytest

from ffnflow.errors import InputError
from ffnflow.metrics import majority_objects


def test_majority_objects_names_the_object_holding_most_of_each_segment():
    seg = np.array([[[1, 1, 1, 2, 2, 3, 0]]], np.uint64)
    gt = np.array([[[5, 5, 7, 7, 9, 0, 4]]], np.uint32)
    # 1: two voxels of 5, one of 7; 2: a tie 7/9 goes to 7; 3: only unlabelled ground truth.
    assert majority_objects(seg, gt) == {1: 5, 2: 7, 3: 0}
    assert majority_objects(seg, np.zeros_like(gt)) == {1: 0, 2: 0, 3: 0}


def test_majority_objects_rejects_mismatched_shapes():
    with pytest.raises(InputError, match="shape"):
        majority_objects(np.zeros((2, 2, 2), np.uint64), np.zeros((2, 2, 3), np.uint64))
