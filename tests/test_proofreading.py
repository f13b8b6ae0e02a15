"""Proofreading hand-off: the agglomeration as supervoxels + Neuroglancer equivalences, and
the segmentation of an edited state."""

from __future__ import annotations

import json
import os
import urllib.parse

import numpy as np
import pytest

from ffnflow.cli import main
from ffnflow.errors import InputError
from ffnflow.proofreading import (
    apply_equivalences,
    merge_edges,
    merged_groups,
    state_equivalences,
)
from ffnflow.resegmentation import (
    PairScore,
    ResegmentationOptions,
    apply_merges,
    merge_table,
    write_scores_csv,
)
from ffnflow.view import neuroglancer_link, neuroglancer_state, prepare_layers
from ffnflow.volumes import open_volume, read_volume, write_volume
from tests.test_view_report import tiny_results


def _supervoxels() -> np.ndarray:
    """Five slabs along x (ids 1-5), 16 x 24 x 32 voxels (z, y, x)."""
    labels = np.zeros((16, 24, 32), np.uint64)
    for i in range(5):
        labels[2:14, 4:20, 1 + 6 * i : 6 + 6 * i] = i + 1
    return labels


def _score(a: int, b: int, iou: float, merge: bool = False) -> PairScore:
    return PairScore(a, b, 8, 12, 6 * a, 100, iou, 0.9, 0.9, 0.0, 1, 10, merge)


def _partition(labels: np.ndarray) -> set[frozenset[int]]:
    """Which voxels go together, as sets of flat indices' first voxel per segment."""
    groups: dict[int, set[int]] = {}
    for sv, seg in zip(_supervoxels().ravel().tolist(), labels.ravel().tolist()):
        if sv:
            groups.setdefault(seg, set()).add(sv)
    return {frozenset(g) for g in groups.values()}


def test_equivalences_of_the_merges_give_the_agglomerated_segmentation():
    supervoxels = _supervoxels()
    scores = [_score(1, 2, 0.9), _score(2, 3, 0.85), _score(1, 2, 0.95), _score(4, 5, 0.1)]
    ids, counts = np.unique(supervoxels, return_counts=True)
    voxels = {int(i): int(c) for i, c in zip(ids, counts) if i}
    table, decided = merge_table(scores, ResegmentationOptions(), voxels)
    assert merged_groups(decided) == [[1, 2, 3]]
    agglomerated = apply_merges(supervoxels, table)
    proofread = apply_equivalences(supervoxels, merged_groups(decided))
    assert (
        _partition(proofread)
        == _partition(agglomerated)
        == {
            frozenset({1, 2, 3}),
            frozenset({4}),
            frozenset({5}),
        }
    )
    assert set(np.unique(proofread).tolist()) == {0, 1, 4, 5}  # a group takes its smallest id
    # As Neuroglancer's equivalences: a spanning tree of the merged pairs, strongest first.
    assert merge_edges(decided) == [(1, 2), (2, 3)]
    assert _partition(apply_equivalences(supervoxels, merge_edges(decided))) == _partition(
        agglomerated
    )
    assert apply_equivalences(supervoxels, []).tolist() == supervoxels.tolist()


def test_state_equivalences_reads_links_json_and_files(tmp_path):
    state = {
        "layers": [
            {"type": "image", "name": "em", "source": "precomputed://x"},
            {"type": "segmentation", "name": "supervoxels", "equivalences": [["1", "2"], [4, 5]]},
        ]
    }
    link = neuroglancer_link(state)
    (tmp_path / "link.txt").write_text(link + "\n")
    (tmp_path / "state.json").write_text(json.dumps(state))
    for given in (state, json.dumps(state), link, tmp_path / "link.txt", tmp_path / "state.json"):
        assert state_equivalences(given) == [[1, 2], [4, 5]]
    older = {"layers": {"supervoxels": {"type": "segmentation", "equivalences": [["7", "8"]]}}}
    raw_link = "https://ng.example/#!" + urllib.parse.quote(json.dumps(older))
    assert state_equivalences(raw_link) == [[7, 8]]
    assert state_equivalences({"layers": [{"name": "supervoxels"}]}) == []

    with pytest.raises(InputError, match=r"no layer named 'seg'; layers: \['em', 'supervoxels'\]"):
        state_equivalences(state, "seg")
    with pytest.raises(InputError, match="must be lists of segment ids"):
        state_equivalences({"layers": [{"name": "supervoxels", "equivalences": [["a"]]}]})
    with pytest.raises(InputError, match="negative"):
        state_equivalences({"layers": [{"name": "supervoxels", "equivalences": [[-1, 2]]}]})
    with pytest.raises(InputError, match="not a JSON Neuroglancer state"):
        state_equivalences("https://ng.example/#!{broken")
    with pytest.raises(InputError, match="neither a Neuroglancer link"):
        state_equivalences(tmp_path / "missing.json")
    with pytest.raises(InputError, match=r"2 segment id\(s\) that are not in the supervoxels"):
        apply_equivalences(_supervoxels(), [[1, 2], [9, 11]])
    with pytest.raises(InputError, match="segment 0"):
        apply_equivalences(_supervoxels(), [[0, 2]])


def test_view_hands_the_agglomeration_to_a_proofreader_and_takes_it_back(tmp_path, capsys):
    """``view --supervoxels`` adds the supervoxels with the agglomeration's merges as
    equivalences; a proofreader splits supervoxel 3 off the merged group and joins 4 and 5;
    ``apply-equivalences`` writes that segmentation."""
    config, results, _, _ = tiny_results(tmp_path)
    with pytest.raises(InputError, match="cleaned.h5: missing.*resegmentation enabled"):
        prepare_layers(config, "d", results, supervoxels=True)
    supervoxels = _supervoxels()
    write_volume(f"{results}/cleaned.h5:labels", supervoxels, (20, 10, 10), "segmentation")
    scores = [
        _score(2, 3, 0.85, True),
        _score(1, 2, 0.9, True),
        _score(1, 3, 0.8, True),  # already joined through 2: not a tree edge
        _score(4, 5, 0.1),
    ]
    write_scores_csv(results / "agglomeration_pairs.csv", scores)

    layers = prepare_layers(config, "d", results, supervoxels=True)
    assert [layer[0] for layer in layers] == ["em", "segmentation", "supervoxels"]
    exported = results / "view" / "supervoxels.precomputed"
    assert np.array_equal(open_volume(f"precomputed://file://{exported}").read(), supervoxels)
    info = json.loads((exported / "info").read_text())
    assert info["mesh"] == "mesh" and (exported / "mesh" / "3:0").is_file()
    state = neuroglancer_state("http://127.0.0.1:8765", layers, (20, 10, 10))
    layer = state["layers"][2]
    # The merged pairs, as Neuroglancer keeps them (a spanning tree per object).
    assert layer["equivalences"] == [["1", "2"], ["2", "3"]] and layer["visible"] is False
    assert layer["source"] == "precomputed://http://127.0.0.1:8765/view/supervoxels.precomputed"

    layer["equivalences"] = [["1", "2"], ["4", "5"]]  # the proofreader's edits
    (tmp_path / "edited.txt").write_text(neuroglancer_link(state))
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    args = ["--config", str(config_file), "--dataset", "d", "--results", str(results)]
    edited = ["--state", str(tmp_path / "edited.txt")]
    assert main(["apply-equivalences", *args, *edited]) == 0
    assert "segments_out" in capsys.readouterr().out
    proofread = read_volume(f"{results}/proofread.h5:labels")
    assert _partition(proofread) == {frozenset({1, 2}), frozenset({3}), frozenset({4, 5})}
    assert main(["apply-equivalences", *args, *edited, "--out", f"{results}/cleaned.h5"]) != 0
    assert "would overwrite the supervoxels" in capsys.readouterr().err

    # A rerun that rewrites cleaned.h5 gets the layer exported again; an unchanged one not.
    stamp = (exported / "info").stat().st_mtime
    prepare_layers(config, "d", results, supervoxels=True)
    assert (exported / "info").stat().st_mtime == stamp
    write_volume(f"{results}/cleaned.h5:labels", supervoxels * 2, (20, 10, 10), "segmentation")
    os.utime(results / "cleaned.h5", (stamp + 10, stamp + 10))
    prepare_layers(config, "d", results, supervoxels=True)
    assert open_volume(f"precomputed://file://{exported}").read().max() == 10
