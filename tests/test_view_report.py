"""Report figures, the metrics table and the Neuroglancer viewer's server and link."""

import json
import threading
import urllib.parse
import urllib.request

import numpy as np
import pytest

from ffnflow.config import validate_config
from ffnflow.errors import InputError
from ffnflow.stages.publish import add_meshes_and_skeletons
from ffnflow.stages.report import label_colors, metrics_table_html, overlay, run_render_overlays
from ffnflow.view import make_server, neuroglancer_link, neuroglancer_state, prepare_layers
from ffnflow.volumes import create_precomputed, open_volume, write_region, write_volume


def test_overlay_colours_segments_and_keeps_background_grey():
    raw = np.arange(16, dtype=np.uint8).reshape(4, 4)
    labels = np.zeros((4, 4), np.uint64)
    labels[:2] = 5
    rgb = overlay(raw, labels)
    assert rgb.shape == (4, 4, 3) and 0 <= rgb.min() and rgb.max() <= 1
    assert np.allclose(rgb[3, :, 0], rgb[3, :, 1])  # unlabelled: grey
    assert not np.allclose(rgb[0, 1, 0], rgb[0, 1, 1])  # labelled: coloured
    assert np.array_equal(label_colors(np.array([5, 5])), label_colors(np.array([5, 5])))


def test_metrics_table_lists_every_stage():
    stage = {"vi_split": 1.0, "vi_merge": 0.5, "vi_sum": 1.5, "arand": 0.2, "erl_nm": 1500.0}
    html = metrics_table_html({"stages": {"ffn": stage, "final": stage}}, "demo")
    assert html.count("<tr>") == 3 and ">ffn<" in html and "1.50" in html  # ERL in µm


def tiny_results(tmp_path, labels=None):
    """A dataset and a published segmentation with meshes and skeletons: two slabs, or
    ``labels`` (16 x 24 x 32, z, y, x) whose segments 1 and 2 are the ones of >= 10 voxels."""
    raw = np.random.default_rng(0).integers(0, 255, (16, 24, 32), dtype=np.uint8)
    if labels is None:
        labels = np.zeros(raw.shape, np.uint64)
        labels[2:14, 4:20, 4:14] = 1
        labels[2:14, 4:20, 16:30] = 2
    write_volume(f"{tmp_path}/d.h5:raw", raw, (20, 10, 10))
    write_volume(f"{tmp_path}/seg.h5:labels", labels, (20, 10, 10), "segmentation")
    config = validate_config(
        {"datasets": {"d": {"raw": f"{tmp_path}/d.h5:raw", "resolution_nm": [20, 10, 10]}}}
    )
    results = tmp_path / "results"
    url = f"precomputed://file://{results}/segmentation.precomputed"
    create_precomputed(url, labels.shape, np.uint64, (20, 10, 10), "segmentation")
    write_region(url, labels, (0, 0, 0))
    assert add_meshes_and_skeletons(url, labels, (20.0, 10.0, 10.0), dust_voxels=10) == (2, 2)
    return config, results, raw, labels


def test_overlays_png_is_written(tmp_path):
    config, _, _, _ = tiny_results(tmp_path)
    png = tmp_path / "overlays.png"
    run_render_overlays(config, "d", tmp_path / "seg.h5", png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_view_serves_layers_with_cors_and_links_them(tmp_path):
    config, results, raw, labels = tiny_results(tmp_path)
    layers = prepare_layers(config, "d", results)
    assert [name for name, _, _ in layers] == ["em", "segmentation"]
    exported = open_volume(f"precomputed://file://{results}/view/raw.precomputed")
    assert np.array_equal(exported.read(), raw)
    server = make_server(results, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        with urllib.request.urlopen(f"http://{host}:{port}/segmentation.precomputed/info") as r:
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            info = json.loads(r.read())
        assert info["mesh"] == "mesh" and info["skeletons"] == "skeletons"
        with urllib.request.urlopen(f"http://{host}:{port}/segmentation.precomputed/mesh/1:0") as r:
            assert json.loads(r.read()) == {"fragments": ["1:0:1"]}
    finally:
        server.shutdown()
        server.server_close()
    state = neuroglancer_state("http://127.0.0.1:8765", layers, (20, 10, 10))
    assert state["dimensions"]["z"] == [20e-9, "m"]
    link = neuroglancer_link(state)
    decoded = json.loads(urllib.parse.unquote(link.split("#!", 1)[1]))
    assert decoded["layers"][1]["source"] == (
        "precomputed://http://127.0.0.1:8765/segmentation.precomputed"
    )


def test_view_without_published_segmentation_says_so(tmp_path):
    config, _, _, _ = tiny_results(tmp_path)
    with pytest.raises(InputError, match="no published segmentation"):
        prepare_layers(config, "d", tmp_path / "elsewhere")


def test_view_of_a_dataset_with_a_roi_exports_the_box_at_its_place(tmp_path):
    """The EM layer of a dataset with a ``roi`` is the box, with the box's voxel offset (as
    the published segmentation), so both lie over the source volume in Neuroglancer."""
    config, results, raw, _ = tiny_results(tmp_path)
    roi = {"offset_zyx": [2, 4, 6], "shape_zyx": [12, 16, 20]}
    config = validate_config({"datasets": {"d": {**config["datasets"]["d"], "roi": roi}}})
    prepare_layers(config, "d", results)
    layer = results / "view" / "raw.precomputed"
    assert json.loads((layer / "info").read_text())["scales"][0]["voxel_offset"] == [6, 4, 2]
    exported = open_volume(f"precomputed://file://{layer}").read()
    assert np.array_equal(exported, raw[2:14, 4:20, 6:26])
