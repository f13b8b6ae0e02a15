"""Consensus, clean-up and resegmentation agglomeration on synthetic volumes."""

from dataclasses import astuple, replace

import cc3d
import edt
import numpy as np
import pytest
from scipy.special import logit

from ffnflow.agglomerate import (
    CleanupOptions,
    clean_up,
    fill_membranes,
    fill_owned_gaps,
    intersection_consensus,
    remove_dust,
    split_disconnected,
)
from ffnflow.errors import InputError
from ffnflow.ffn.canvas import InferenceOptions
from ffnflow.resegmentation import (
    LocalRuns,
    PairScore,
    ResegmentationOptions,
    apply_merges,
    compare_runs,
    contact_faces,
    decision_points,
    merge_table,
    read_points_csv,
    read_scores_csv,
    score_pair,
    write_points_csv,
    write_scores_csv,
)
from tests.test_canvas import OraclePredictor


class ConnectedOracle(OraclePredictor):
    """Predicts the bright component that holds the FOV centre (an ideal FFN).

    Logits rise towards the middle of the object, as a real FFN's do, so the face-max
    policy moves along the object's axis. Its FOV is wider than the tubes below.
    """

    fov_size_zyx = (21, 21, 21)
    deltas_zyx = (5, 5, 5)

    def predict(self, image, pom_logits):
        out = np.full(image.shape, -3.0, np.float32)
        for i, fov in enumerate(image):
            components = cc3d.connected_components(fov > 0, connectivity=6)
            centre = components[tuple(np.array(fov.shape) // 2)]
            if centre:
                inside = components == centre
                depth = edt.edt(inside.astype(np.uint8), black_border=True)
                out[i][inside] = 2.5 + 0.1 * depth[inside]
        return out


def test_consensus_splits_the_first_pass_by_every_label_pair_of_both_passes():
    a = np.zeros((10, 10, 10), np.uint64)
    a[:, :, :5], a[:, :, 5:] = 1, 2
    a[:, 0, :] = 0  # the first pass left row y 0 out
    b = a.copy()
    b[:5] = 7  # the second pass merged the top half
    b[:, 0, :] = 7  # labelled row y 0
    b[9] = 0  # and left the last slice out
    original_a, original_b = a.copy(), b.copy()
    c = intersection_consensus(a, b, min_segment_voxels=10)
    assert np.array_equal(a, original_a) and np.array_equal(b, original_b)  # inputs untouched
    assert c[:, 0, :].max() == 0  # unlabelled in the first pass: stays unlabelled
    # (a, 0) is a piece of its own, as in the reference: z 9 keeps two segments
    assert len(np.unique(c[9, 1:, :])) == 2 and c[9, 1:, :].min() > 0
    ids, counts = np.unique(c[c > 0], return_counts=True)
    assert sorted(counts) == [45, 45, 180, 180, 225, 225]
    assert len(np.unique(c[:5, 1:, :5])) == 1 and c[0, 1, 0] != c[5, 1, 0]
    # a voxel pair that occurs less often than the minimum size is dropped
    c = intersection_consensus(a, b, min_segment_voxels=181)
    assert c[5:, 1:].max() == 0 and c[:5, 1:].min() > 0


def test_split_dust_and_owned_gap_filling():
    s = np.zeros((10, 10, 10), np.uint64)
    s[:, :, :3] = 4
    s[:, :, 6:] = 4
    pieces = split_disconnected(s)
    assert sorted(np.unique(pieces[pieces > 0], return_counts=True)[1]) == [300, 400]
    assert remove_dust(pieces, 350).max() == 1

    h = np.full((10, 10, 10), 3, np.uint64)
    h[4:6, 4:6, 4:6] = 0  # a pocket inside segment 3: owned
    h[:, :, 9] = 5
    h[0:2, 0:2, 8] = 0  # a pocket between 3 (8 faces) and 5 (4 faces): not owned at 0.9
    filled, n = fill_owned_gaps(h)
    assert n == 8 and filled[4:6, 4:6, 4:6].min() == 3 and filled[0, 0, 8] == 0
    assert fill_owned_gaps(h, min_owner_fraction=0.6)[0][0, 0, 8] == 3
    excluded = np.zeros(h.shape, bool)
    excluded[4, 4, 4] = True
    filled, n = fill_owned_gaps(h, excluded)
    assert n == 7 and filled[4, 4, 4] == 0
    assert fill_owned_gaps(h, max_gap_voxels=7)[1] == 0

    cleaned, counters = clean_up(s, CleanupOptions(min_segment_voxels=5))
    assert counters["pieces"] == 2 and counters["segments_out"] == 2
    assert cleaned[:, :, 3:6].max() == 0  # the gap between the pieces is shared: not filled


def test_membrane_fill_splits_the_membrane_at_its_darkest_line():
    # Two cells along x with a 5-voxel unlabelled membrane between them (x 6-10); its
    # darkest plane is x 9, where the two floods meet: cell 7 (left) takes x 6-8 and
    # cell 9 (right) reaches x 10 first and then x 9.
    labels = np.zeros((4, 5, 20), np.uint64)
    labels[..., :6] = 7
    labels[..., 11:16] = 9  # x 16-19: open space beyond cell 9
    image = np.full(labels.shape, 200.0, np.float32)
    image[..., 6:11] = [120.0, 80.0, 40.0, 10.0, 60.0]
    before = labels.copy()
    filled, n = fill_membranes(labels, image, max_distance_voxels=3)
    np.testing.assert_array_equal(labels, before)  # the input is not modified
    assert (filled[..., 6:9] == 7).all() and (filled[..., 9:11] == 9).all()
    # Open space is filled up to 3 voxels from cell 9 (x 16-18), not beyond.
    assert (filled[..., 16:19] == 9).all() and (filled[..., 19] == 0).all()
    assert n == 4 * 5 * (5 + 3)
    # Bright membranes: the meeting line follows the brightest plane instead (x 6).
    bright, _ = fill_membranes(labels, -image + 255.0, 3, membrane="bright")
    assert (bright[..., 6:9] == 7).all()
    np.testing.assert_array_equal(bright, filled)
    flipped = fill_membranes(labels, image[..., ::-1].copy(), 3)[0]
    assert (flipped[..., 6:11] == 7).all()  # darkest now at x 10: cell 7 takes it all
    # Excluded voxels are neither filled nor crossed: a wall at x 8 stops cell 7 at x 7.
    excluded = np.zeros(labels.shape, bool)
    excluded[..., 8] = True
    walled, _ = fill_membranes(labels, image, 3, excluded=excluded)
    assert (walled[..., 8] == 0).all() and (walled[..., 6:8] == 7).all()
    assert (walled[..., 9:11] == 9).all()
    # Ids beyond int32 survive the watershed.
    big, _ = fill_membranes(np.where(labels == 9, 2**40 + 5, labels), image, 3)
    assert (big[..., 9:11] == 2**40 + 5).all()


def test_membrane_fill_rejects_bad_input():
    labels = np.zeros((4, 4, 4), np.uint64)
    with pytest.raises(InputError, match="labels and image"):
        fill_membranes(labels, np.zeros((4, 4, 5)), 3)
    with pytest.raises(InputError, match="membrane must be"):
        fill_membranes(labels, np.zeros((4, 4, 4)), 3, membrane="grey")


def test_consensus_rejects_shape_mismatch():
    with pytest.raises(InputError, match="shapes"):
        intersection_consensus(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), 1)


def two_tubes(shape=(48, 32, 40)):
    """A bright tube split in two (A above z=24, B below), a parallel tube C beside it.

    Returns (image, labels): the image is bright inside the tubes and dark elsewhere, the
    labels have a 1-voxel unlabelled cut between A and B (an FFN split) and C is separated
    from A/B by a dark 2-voxel membrane.
    """
    image = np.full(shape, -1.0, np.float32)
    labels = np.zeros(shape, np.uint64)
    image[:, 8:24, 6:18] = 1.0
    image[:, 8:24, 20:34] = 1.0
    labels[:24, 8:24, 6:18] = 1
    labels[25:, 8:24, 6:18] = 2
    labels[:, 8:24, 20:34] = 3
    return image, labels


def test_resegmentation_merges_the_split_and_not_the_neighbour(tmp_path):
    image, labels = two_tubes()
    options = ResegmentationOptions(
        max_gap_voxels=2,
        min_contact_faces=10,
        min_segment_voxels=100,
        radius_zyx=(10, 10, 10),
        analysis_radius_zyx=(8, 8, 8),
        seed_search_radius=8,
        max_deleted=0.05,
    )
    points = decision_points(labels, options)
    assert [(p.a, p.b) for p in points] == [(1, 2), (1, 3), (2, 3)]
    ab = points[0]
    assert 23 <= ab.z <= 25 and 12 <= ab.y <= 19 and 9 <= ab.x <= 14  # middle of the cut
    inference = InferenceOptions(min_segment_size=10)
    scores = [score_pair(image, labels, p, ConnectedOracle(), inference, options) for p in points]
    assert [s.merge for s in scores] == [True, False, False]
    assert scores[0].iou > 0.9 and scores[1].iou < 0.1 and scores[0].fov_evaluations > 0

    table, decided = merge_table(scores, options, {1: 4000, 2: 4000, 3: 9000})
    assert decided == scores
    merged = apply_merges(labels, table)
    assert set(np.unique(merged)) == {0, 1, 3}
    assert labels.max() == 3 and 2 in labels  # input untouched

    write_points_csv(tmp_path / "p.csv", points)
    assert read_points_csv(tmp_path / "p.csv") == points
    write_scores_csv(tmp_path / "s.csv", scores)
    assert read_scores_csv(tmp_path / "s.csv") == scores


def _scored(a, b, iou):
    return PairScore(a, b, 0, 0, 0, 100, iou, 0.9, 0.9, 0.0, 1, 10, True)


def test_two_large_segments_are_not_merged_through_a_small_one():
    """A small fragment (3) that the runs join to two large segments (1, 2) goes with the
    stronger one; 1 and 2 merge only on their own pair's evidence."""
    options = ResegmentationOptions(large_segment_voxels=5000)
    voxels = {1: 50000, 2: 40000, 3: 800, 4: 60000, 5: 700}
    scores = [_scored(1, 3, 0.9), _scored(2, 3, 0.8), _scored(4, 5, 0.5), _scored(2, 5, 0.2)]
    table, decided = merge_table(scores, options, voxels)
    assert [s.merge for s in decided] == [True, False, True, False]  # 2-5 below merge_iou
    assert table[3] == table[1] and table[5] == table[4]
    assert table.get(2, 2) not in (table[1], table[4])
    # The same chain with a direct pair of the two large segments merges all three.
    table, decided = merge_table([*scores, _scored(1, 2, 0.3)], options, voxels)
    assert [s.merge for s in decided] == [True, False, True, False, True]
    assert table[1] == table[2] == table[3]
    # Without either limit the fragment joins both.
    unlimited = ResegmentationOptions(large_segment_voxels=0, min_bridge_fraction=0.0)
    table, decided = merge_table(scores, unlimited, voxels)
    assert table[1] == table[2] == table[3] and sum(s.merge for s in decided) == 3
    # min_bridge_fraction alone (the default 0.1) stops it too: 800 < 0.1 * 40000.
    table, decided = merge_table(scores, replace(unlimited, min_bridge_fraction=0.1), voxels)
    assert table.get(2, 2) != table[1]


def test_a_fragment_bridges_two_groups_only_when_it_is_not_much_smaller():
    """min_bridge_fraction: fragment 3 joins group 1 alone, then may not also bring in
    the 19.5k-voxel group {2, 4} (just under large_segment_voxels, as on the demo volume);
    a chain of similar pieces (5-6-7) still joins."""
    options = ResegmentationOptions(large_segment_voxels=20000, min_bridge_fraction=0.0)
    voxels = {1: 100000, 2: 13000, 3: 1000, 4: 6500, 5: 3000, 6: 1700, 7: 3500}
    scores = [
        _scored(1, 3, 0.9), _scored(2, 4, 0.6), _scored(2, 3, 0.5),
        _scored(5, 6, 0.45), _scored(6, 7, 0.4),
    ]  # fmt: skip
    table, decided = merge_table(scores, options, voxels)
    assert table[1] == table[2] == table[3]  # the guard alone lets 3 bridge 1 and {2, 4}
    table, decided = merge_table(scores, replace(options, min_bridge_fraction=0.25), voxels)
    assert [s.merge for s in decided] == [True, True, False, True, True]
    assert table[1] == table[3] and table[2] == table[4] and table[1] != table[2]
    assert table[5] == table[6] == table[7]
    # The default (0.1) refuses the bridge too: 1000 < 0.1 * 19500.
    table, decided = merge_table(scores, ResegmentationOptions(), voxels)
    assert [s.merge for s in decided] == [True, True, False, True, True]


def test_a_pair_touching_in_two_places_gets_a_point_on_each_contact():
    """A U-shaped segment touches a bar twice: one decision point per contact, the larger
    first; max_points_per_pair caps them; the pair merges when one point passes."""
    labels = np.zeros((20, 40, 40), np.uint64)
    labels[:, 5:15, 5:35] = 1  # the bar
    labels[:, 16:35, 5:12] = 2  # the U's left arm, touching the bar over 7 voxels of x
    labels[:, 16:35, 25:35] = 2  # the right arm, 10 voxels of x
    labels[:, 28:35, 12:25] = 2  # the U's bottom, far from the bar
    options = ResegmentationOptions(max_gap_voxels=1, min_contact_faces=20, min_segment_voxels=100)
    points = decision_points(labels, options)
    assert [(p.a, p.b) for p in points] == [(1, 2), (1, 2)]
    assert points[0].contact_faces > points[1].contact_faces
    assert 25 <= points[0].x < 35 and 5 <= points[1].x < 12
    assert decision_points(labels, replace(options, max_points_per_pair=1)) == points[:1]
    # The first contact fails, the second passes: the pair merges, only that row says so.
    fail = PairScore(*astuple(points[0]), 0.0, 0.9, 0.9, 0.0, 1, 10, False)
    passed = PairScore(*astuple(points[1]), 0.7, 0.9, 0.9, 0.0, 1, 10, True)
    table, decided = merge_table([fail, passed], options, {1: 6000, 2: 5000})
    assert table[1] == table[2] and [s.merge for s in decided] == [False, True]


def test_decision_points_prune_small_segments_and_small_contacts():
    _, labels = two_tubes()
    assert decision_points(labels, ResegmentationOptions(min_segment_voxels=10**6)) == []
    assert decision_points(labels, ResegmentationOptions(min_contact_faces=10**6)) == []
    # without growing, the 1-voxel cut and the 2-voxel membrane keep everything apart
    assert decision_points(labels, ResegmentationOptions(max_gap_voxels=0)) == []


def test_resegmentation_at_a_mirrored_volume_border_can_merge():
    """A split 5 voxels from the volume face: no seed of A has a FOV of image there, unless
    the border is mirrored as the FFN stage does (``ffn.volume_border: mirror``)."""
    from ffnflow.stages.segment import pad_volume_border

    image, labels = two_tubes()
    labels[labels == 3] = 0
    labels[(labels > 0) & (np.arange(48)[:, None, None] < 5)] = 1
    labels[(labels > 0) & (np.arange(48)[:, None, None] >= 5)] = 2
    labels[5] = 0  # the cut
    options = ResegmentationOptions(
        max_gap_voxels=2, min_contact_faces=10, min_segment_voxels=100,
        radius_zyx=(10, 10, 10), analysis_radius_zyx=(8, 8, 8), seed_search_radius=8,
        max_deleted=0.05,
    )  # fmt: skip
    (point,) = decision_points(labels, options)
    inference = InferenceOptions(min_segment_size=10)
    plain = score_pair(image, labels, point, ConnectedOracle(), inference, options)
    assert not plain.merge and plain.consistency_a == 0  # A could not be traced

    pad = [(10, 10), (0, 0), (0, 0)]  # the oracle's FOV radius along z
    padded, mask = pad_volume_border(image, None, pad)
    shifted = type(point)(point.a, point.b, point.z + 10, point.y, point.x, point.contact_faces)
    mirrored = score_pair(
        padded, np.pad(labels, pad), shifted, ConnectedOracle(), inference, options, mask
    )
    assert mirrored.merge and mirrored.iou > 0.9


def scoring_setup(tmp_path, tiny_em) -> tuple[dict, list]:
    """A small-radius resegmentation config of ``tiny_em`` and three of its decision points
    (the GT labels as segments) with a whole FOV of image around them, in points.csv."""
    from ffnflow.config import validate_config
    from ffnflow.stages.agglomerate import run_find_decision_points

    config = validate_config(
        {
            "datasets": {"d": {"raw": f"{tiny_em}:raw", "resolution_nm": [10, 10, 10]}},
            "ffn": {"device": "cpu", "progress": False},
            "agglomeration": {
                "resegmentation": {
                    "min_segment_voxels": 500,
                    "radius_zyx": [4, 4, 4],
                    "analysis_radius_zyx": [4, 4, 4],
                }
            },
        }
    )
    all_points = tmp_path / "all_points.csv"
    run_find_decision_points(config, "d", tiny_em, all_points)
    inner = [p for p in read_points_csv(all_points) if all(14 <= c < 34 for c in p.point)]
    points = inner[:3]
    assert len(points) == 3
    write_points_csv(tmp_path / "points.csv", points)
    return config, points


def test_scoring_in_processes_equals_scoring_in_one(tmp_path, tiny_em):
    """run_score_pairs with 2 threads on the CPU scores in 2 single-threaded processes; the
    scores and their order are those of one process."""
    from ffnflow.stages.score_pairs import run_score_pairs

    config, points = scoring_setup(tmp_path, tiny_em)
    one = run_score_pairs(
        config, "d", "z0_y0_x0", tiny_em, tmp_path / "points.csv", tmp_path / "one.csv", threads=1
    )
    two = run_score_pairs(
        config, "d", "z0_y0_x0", tiny_em, tmp_path / "points.csv", tmp_path / "two.csv", threads=2
    )
    assert [(s.a, s.b) for s in one] == [(p.a, p.b) for p in points]
    assert one == two and sum(s.fov_evaluations for s in one) > 0
    assert read_scores_csv(tmp_path / "two.csv") == two


def test_a_killed_scoring_job_resumes_from_its_checkpoint(tmp_path, tiny_em):
    """Points a killed run scored (kept in ``pair_scores.csv.partial``) are not scored again;
    a row cut off by the kill, or a checkpoint of other inputs, is scored afresh."""
    from ffnflow.stages.score_pairs import ScoreCheckpoint, run_score_pairs, scoring_fingerprint

    config, _ = scoring_setup(tmp_path, tiny_em)

    def score(name: str) -> list:
        return run_score_pairs(
            config, "d", "z0_y0_x0", tiny_em, tmp_path / "points.csv", tmp_path / name, 1
        )

    fresh = score("fresh.csv")
    assert not (tmp_path / "fresh.csv.partial").exists()  # removed once the block is done
    # A run killed after two points; the first one's row is marked to show that it is reused.
    fingerprint = scoring_fingerprint(config, "d", tiny_em, None)
    marked = replace(fresh[0], fov_evaluations=-1)
    checkpoint = ScoreCheckpoint(tmp_path / "resumed.csv", fingerprint)
    checkpoint.start({})
    checkpoint.append(marked)
    checkpoint.append(fresh[1])
    with open(checkpoint.path, "a") as f:
        cut = astuple(replace(fresh[2], fov_evaluations=-2))[:-1]  # cut off by the kill
        f.write(",".join(str(v) for v in cut))
    resumed = score("resumed.csv")
    assert resumed == [marked, *fresh[1:]]
    assert read_scores_csv(tmp_path / "resumed.csv") == resumed
    assert not checkpoint.path.exists()
    # Another FFN option or another cleaned file makes other inputs; a merge threshold not.
    other_ffn = {**config, "ffn": {**config["ffn"], "precision": "bf16"}}
    reseg = config["agglomeration"]["resegmentation"]
    other_merge = {**config, "agglomeration": {"resegmentation": {**reseg, "merge_iou": 0.9}}}
    assert scoring_fingerprint(other_ffn, "d", tiny_em, None) != fingerprint
    assert scoring_fingerprint(config, "d", tmp_path / "points.csv", None) != fingerprint
    assert scoring_fingerprint(other_merge, "d", tiny_em, None) == fingerprint
    # A checkpoint of other inputs is not used.
    stale = ScoreCheckpoint(tmp_path / "stale.csv", "0123456789abcdef")
    stale.start({})
    stale.append(marked)
    assert score("stale.csv") == fresh


def test_compare_runs_reads_both_runs_at_the_given_pom_threshold():
    # 1 x 1 x 10 box: A = voxels 0-4, B = 5-9; voxel 9 belongs to neither run (claimable).
    is_a = np.zeros((1, 1, 10), bool)
    is_a[..., :5] = True
    # Run from A: sure of A, unsure (POM 0.4) of voxels 5-6, never predicted 7-9.
    run_a = np.full((1, 1, 10), np.nan, np.float32)
    run_a[..., :5], run_a[..., 5:7] = logit(0.9), logit(0.4)
    # Run from B: sure of 3-8, 0.4 on 1-2, 0.1 on 0.
    run_b = np.full((1, 1, 10), logit(0.9), np.float32)
    run_b[..., 0], run_b[..., 1:3] = logit(0.1), logit(0.4)
    claimable = np.ones((1, 1, 10), bool)
    claimable[..., 9] = False
    runs = LocalRuns(run_a, run_b, is_a, ~is_a, claimable, seed_tries=2, fov_evaluations=7)
    at_06 = compare_runs(runs, 0.6)  # A-run 0-4, B-run 3-8: 2 shared of 9
    assert at_06.iou == pytest.approx(2 / 9)
    assert at_06.consistency_a == 1.0 and at_06.consistency_b == pytest.approx(4 / 5)
    assert at_06.deleted == pytest.approx(1 / 10)  # voxel 9
    at_03 = compare_runs(runs, 0.3)  # A-run 0-6, B-run 1-8: 6 shared of 9
    assert at_03.iou == pytest.approx(6 / 9)
    assert at_03.consistency_b == pytest.approx(4 / 5) and at_03.deleted == pytest.approx(0.1)


def test_contact_faces_lists_each_face_once_with_the_voxels_on_both_sides():
    labels = np.zeros((4, 5, 6), np.uint64)
    labels[:, :, :3], labels[:, :2, 3:] = 7, 3  # 7 | 3 across x = 2/3 for y < 2
    labels[0, 0, 0] = 0  # background touches nobody
    pairs, first, second = contact_faces(labels)
    assert len(pairs) == 4 * 2 and (pairs == [3, 7]).all()
    assert (first[:, 2] == 2).all() and (second[:, 2] == 3).all()
    assert (second - first == [0, 0, 1]).all()
    assert set(map(tuple, first[:, :2])) == {(z, y) for z in range(4) for y in range(2)}
