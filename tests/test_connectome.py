"""The connectome graph on synthetic volumes with known synapses and contacts."""

import networkx as nx
import numpy as np
import pytest

from ffnflow.connectome import (
    Synapses,
    build_graph,
    contact_areas_um2,
    graph_for_graphml,
    graph_summary,
    read_synapses,
)
from ffnflow.errors import InputError

RES = (40.0, 8.0, 8.0)  # z, y, x nm: anisotropic so that axis mix-ups show


def three_boxes():
    """Boxes 1 and 2 touch along x (face 10 z x 10 y voxels); box 3 lies apart."""
    seg = np.zeros((20, 30, 40), np.uint32)
    seg[2:12, 5:15, 5:20] = 1
    seg[2:12, 5:15, 20:30] = 2
    seg[14:18, 0:30, 0:40] = 3
    return seg


def test_contact_area_of_touching_boxes_is_the_shared_face():
    seg = three_boxes()
    areas = contact_areas_um2(seg, RES)
    assert list(areas) == [(1, 2)]
    assert areas[(1, 2)] == pytest.approx(10 * 10 * 40 * 8 * 1e-6, rel=0.1)
    # boxes stacked along z share an x-y face: area ny * nx * ry * rx
    stacked = np.zeros((20, 30, 40), np.uint32)
    stacked[0:5, 5:25, 5:35] = 4
    stacked[5:10, 5:25, 5:35] = 9
    assert contact_areas_um2(stacked, RES)[(4, 9)] == pytest.approx(20 * 30 * 8 * 8 * 1e-6)


def test_graph_has_the_expected_nodes_directed_edges_and_weights(tmp_path):
    seg = three_boxes()
    synapses = Synapses(
        pre=np.array([[5, 8, 10], [6, 9, 11], [5, 8, 25], [0, 0, 0], [50, 0, 0], [5, 8, 25]]),
        post=np.array([[5, 8, 25], [5, 8, 25], [15, 3, 3], [5, 8, 10], [1, 1, 1], [0, 0, 0]]),
    )
    graph, assignment = build_graph(seg, RES, synapses, {1: 123.0})
    assert sorted(graph.nodes) == [1, 2, 3]
    assert graph.nodes[1]["voxels"] == 1500
    assert graph.nodes[1]["volume_um3"] == pytest.approx(1500 * 40 * 8 * 8 * 1e-9)
    assert graph.nodes[1]["bbox_zyx"] == [2, 5, 5, 12, 15, 20]
    assert graph.nodes[1]["centroid_nm"] == pytest.approx([6.5 * 40, 9.5 * 8, 12 * 8])
    assert graph.nodes[1]["cable_length_nm"] == 123.0 and graph.nodes[3]["cable_length_nm"] == 0
    synapse_edges = {
        (a, b): d["weight"] for a, b, d in graph.edges(data=True) if d["kind"] == "synapse"
    }
    assert synapse_edges == {(1, 2): 2, (2, 3): 1}  # directed: no (2, 1)
    contacts = [(a, b) for a, b, d in graph.edges(data=True) if d["kind"] == "contact"]
    assert contacts == [(1, 2)]
    assert assignment.unassigned == [
        (3, "pre_unsegmented"),
        (4, "outside_volume"),
        (5, "post_unsegmented"),
    ]
    summary = graph_summary(graph, assignment)
    assert summary["synapses_assigned"] == 3 and summary["synapse_edges"] == 2
    assert summary["synapses_unassigned"] == {
        "outside_volume": 1,
        "post_unsegmented": 1,
        "pre_unsegmented": 1,
    }
    path = tmp_path / "g.graphml"
    nx.write_graphml(graph_for_graphml(graph), path)
    back = nx.read_graphml(path, node_type=int)
    assert sorted(back.nodes) == [1, 2, 3] and back.number_of_edges() == 3


def test_synapse_table_in_nm_is_converted_to_voxels(tmp_path):
    table = tmp_path / "syn.csv"
    table.write_text("pre_z,pre_y,pre_x,post_z,post_y,post_x\n200,64,80,200,64,200\n")
    syn = read_synapses(table, RES, "nm")
    assert syn.pre.tolist() == [[5, 8, 10]] and syn.post.tolist() == [[5, 8, 25]]
    assert read_synapses(table, RES, "voxels").pre.tolist() == [[200, 64, 80]]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="missing synapse columns"):
        read_synapses(bad, RES)
    with pytest.raises(InputError, match="not found"):
        read_synapses(tmp_path / "none.csv", RES)
