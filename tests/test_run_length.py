"""Expected run length against hand-computed values, and kimimaro skeletons."""

import numpy as np
import pytest

from ffnflow.run_length import Skeleton, expected_run_length, segmentation_run_length, skeletonize


def chain(n_nodes, spacing=10.0, offset=(0.0, 0.0, 0.0)):
    """A straight skeleton of ``n_nodes`` along x, ``spacing`` nm apart."""
    vertices = np.array([[0.0, 0.0, i * spacing] for i in range(n_nodes)]) + offset
    edges = np.array([[i, i + 1] for i in range(n_nodes - 1)])
    return Skeleton(vertices, edges)


def test_perfect_segmentation_gives_the_length_weighted_mean_length():
    skeletons = {1: chain(5), 2: chain(3)}  # 40 nm and 20 nm
    result = expected_run_length(skeletons, {1: np.full(5, 7), 2: np.full(3, 8)})
    assert result.erl_nm == pytest.approx((40**2 + 20**2) / 60)
    assert (result.n_splits, result.n_merges, result.n_omitted_nodes) == (0, 0, 0)


def test_one_split_breaks_the_run():
    # nodes 0-2 in segment 1, nodes 3-4 in segment 2: edge 2-3 is an error
    result = expected_run_length({1: chain(5)}, {1: np.array([1, 1, 1, 2, 2])})
    assert result.erl_nm == pytest.approx((20**2 + 10**2) / 40)
    assert result.n_splits == 1 and result.n_merges == 0


def test_one_merge_zeroes_both_skeletons_runs_in_the_merged_segment():
    skeletons = {1: chain(5), 2: chain(3, offset=(100.0, 0.0, 0.0))}
    # skeleton 2 is all in segment 1, which also holds skeleton 1's first three nodes
    result = expected_run_length(skeletons, {1: np.array([1, 1, 1, 3, 3]), 2: np.full(3, 1)})
    assert result.erl_nm == pytest.approx(10**2 / 60)
    assert result.n_merges == 1 and result.merging_segments == [1] and result.n_splits == 1


def test_merge_min_nodes_ignores_a_few_stray_nodes_of_another_skeleton():
    skeletons = {1: chain(5), 2: chain(6, offset=(100.0, 0.0, 0.0))}
    # skeleton 2's tip node (a boundary voxel) lies in segment 1, the rest in segment 2
    segments = {1: np.full(5, 1), 2: np.array([1, 2, 2, 2, 2, 2])}
    strict = expected_run_length(skeletons, segments)
    assert strict.merging_segments == [1] and strict.erl_nm == pytest.approx(40**2 / 90)
    tolerant = expected_run_length(skeletons, segments, merge_min_nodes=2)
    assert tolerant.merging_segments == [] and tolerant.n_merges == 0
    assert tolerant.erl_nm == pytest.approx((40**2 + 40**2) / 90)
    # two stray nodes reach the tolerance: a merge again
    segments[2] = np.array([1, 1, 2, 2, 2, 2])
    assert expected_run_length(skeletons, segments, merge_min_nodes=2).merging_segments == [1]
    with pytest.raises(ValueError, match="merge_min_nodes"):
        expected_run_length(skeletons, segments, merge_min_nodes=0)


def test_unlabelled_nodes_are_omitted_and_break_runs():
    result = expected_run_length({1: chain(5)}, {1: np.array([1, 1, 0, 1, 1])})
    # segment 1 holds edges 0-1 and 3-4; as in funlib, a segment's run sums its correct edges
    assert result.erl_nm == pytest.approx((10 + 10) ** 2 / 40)
    assert result.n_omitted_nodes == 1 and result.n_splits == 0


def test_kimimaro_skeletons_are_in_zyx_nm_and_measure_a_tube():
    labels = np.zeros((40, 30, 60), np.uint32)
    labels[18:24, 10:16, 2:58] = 1  # a tube along x
    skeletons = skeletonize(labels, (20.0, 10.0, 10.0), dust_voxels=10)
    tube = skeletons[1]
    assert np.ptp(tube.vertices_nm[:, 2]) > 450  # it runs along x (56 voxels x 10 nm)
    assert np.ptp(tube.vertices_nm[:, 0]) <= 120
    assert 450 < tube.cable_length_nm < 700
    whole = segmentation_run_length(labels, skeletons, (20.0, 10.0, 10.0))
    assert whole.erl_nm == pytest.approx(tube.cable_length_nm)
    halves = labels.copy()
    halves[:, :, 30:][halves[:, :, 30:] == 1] = 2
    split = segmentation_run_length(halves, skeletons, (20.0, 10.0, 10.0))
    assert split.n_splits == 1 and split.erl_nm < 0.6 * whole.erl_nm


def test_evaluate_stage_applies_the_configured_merge_tolerance(tmp_path):
    import json

    from ffnflow.config import validate_config
    from ffnflow.stages.evaluate import run_evaluate
    from ffnflow.volumes import write_volume

    gt = np.zeros((30, 30, 60), np.uint32)
    gt[5:11, 5:11, 2:58] = 1
    gt[18:24, 18:24, 2:58] = 2
    seg = gt.astype(np.uint64)
    seg[18:24, 18:24, 56:58] = 1  # segment 1 takes tube 2's end: a stray tip node or two
    write_volume(f"{tmp_path}/gt.h5:labels", gt, (10, 10, 10))
    write_volume(f"{tmp_path}/seg.h5:labels", seg, (10, 10, 10))
    merges = {}
    for tolerance in (1, 10):
        cfg = validate_config(
            {
                "datasets": {
                    "d": {
                        "raw": f"{tmp_path}/gt.h5:labels",
                        "labels": f"{tmp_path}/gt.h5:labels",
                        "resolution_nm": [10, 10, 10],
                    }
                },
                "evaluation": {"skeleton_dust_voxels": 10, "erl_merge_min_nodes": tolerance},
            }
        )
        out = tmp_path / f"metrics_{tolerance}.json"
        run_evaluate(cfg, "d", f"{tmp_path}/seg.h5:labels", out)
        merges[tolerance] = json.loads(out.read_text())["erl_merges"]
    assert merges == {1: 1, 10: 0}
