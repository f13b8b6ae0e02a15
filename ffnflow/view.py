"""Browse a dataset's results in Neuroglancer: precomputed layers served on localhost.

``ffnflow view --config config.yaml --dataset NAME`` exports the raw image (and the mask
net's exclusion and boundary maps, when present) as precomputed layers under
``results/NAME/view/`` once, serves ``results/NAME/`` over HTTP with CORS on localhost,
and prints a Neuroglancer link whose layers are the EM, the mask and the final
segmentation (``segmentation.precomputed``, with its meshes and skeletons).

With ``--supervoxels`` the link also has the agglomeration graph for proofreading: layer
``supervoxels`` shows ``cleaned.h5`` (with meshes) and its ``equivalences`` are the merges
of the agglomeration (:mod:`ffnflow.proofreading`); ``ffnflow apply-equivalences`` turns
an edited state back into a segmentation.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from ffnflow.atomic import atomic_output
from ffnflow.config import dataset_config
from ffnflow.errors import InputError
from ffnflow.stages.common import open_raw
from ffnflow.stages.publish import add_meshes_and_skeletons, write_precomputed_by_blocks
from ffnflow.volumes import Volume, open_volume

log = logging.getLogger("ffnflow")

NEUROGLANCER_APP = "https://neuroglancer-demo.appspot.com/"


class CorsRequestHandler(SimpleHTTPRequestHandler):
    """Static files with ``Access-Control-Allow-Origin: *`` (Neuroglancer runs elsewhere)."""

    def end_headers(self) -> None:
        self.send_header("Access-Control-Allow-Origin", "*")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (base class name)
        log.debug("http: " + format, *args)


def make_server(
    directory: str | Path, port: int = 0, host: str = "127.0.0.1"
) -> ThreadingHTTPServer:
    """An HTTP server for ``directory`` on ``host:port`` (0 = any free port); not started."""
    handler = partial(CorsRequestHandler, directory=str(directory))
    return ThreadingHTTPServer((host, port), handler)


def export_layer(
    source: str | Volume,
    out_dir: str | Path,
    resolution_nm,
    layer_type: str,
    config: dict[str, Any],
    offset_zyx: tuple[int, int, int] = (0, 0, 0),
    meshes: bool = False,
) -> Path:
    """Write a volume (a spec or an opened, possibly cropped, volume) as a precomputed layer
    ``out_dir`` (block by block; again only when a local source is newer than the layer),
    placed at ``offset_zyx`` (voxels); ``meshes``: a segmentation layer gets meshes and
    skeletons."""
    out_dir = Path(out_dir)
    if not isinstance(source, Volume):
        source = open_volume(source)
    info = out_dir / "info"
    if info.is_file():
        path = source.spec.path  # a local source rewritten since the export: export again
        if path is None or not path.exists() or path.stat().st_mtime <= info.stat().st_mtime:
            return out_dir
    dtype = source.dtype if layer_type == "image" else np.uint64
    with atomic_output(out_dir) as tmp:
        url = write_precomputed_by_blocks(
            config, source, tmp, resolution_nm, layer_type, dtype, offset_zyx
        )
        if layer_type == "segmentation" and meshes:
            add_meshes_and_skeletons(url, source.read(), resolution_nm, offset_zyx=offset_zyx)
    return out_dir


def neuroglancer_state(base_url: str, layers: list[tuple], resolution_nm) -> dict:
    """A Neuroglancer state: ``layers`` are (name, path under base_url, image|segmentation)
    and optionally a dict of more layer properties (e.g. ``equivalences``)."""
    z, y, x = (float(r) for r in resolution_nm)
    out = []
    for name, path, kind, *more in layers:
        layer = {"type": kind, "source": f"precomputed://{base_url}/{path}", "name": name}
        for extra in more:
            layer.update(extra)
        out.append(layer)
    return {
        "dimensions": {"x": [x * 1e-9, "m"], "y": [y * 1e-9, "m"], "z": [z * 1e-9, "m"]},
        "layers": out,
        "layout": "4panel",
    }


def neuroglancer_link(state: dict, app: str = NEUROGLANCER_APP) -> str:
    """The URL that opens ``state`` in a Neuroglancer app."""
    return f"{app}#!{urllib.parse.quote(json.dumps(state, separators=(',', ':')))}"


def prepare_layers(
    config: dict[str, Any], dataset_name: str, results_dir: str | Path, supervoxels: bool = False
) -> list:
    """Export what is missing and list the layers (name, path in results_dir, kind[, more
    layer properties]); ``supervoxels``: add the agglomeration graph (module docstring)."""
    dataset = dataset_config(config, dataset_name)
    results_dir = Path(results_dir)
    segmentation = results_dir / "segmentation.precomputed"
    if not (segmentation / "info").is_file():
        raise InputError(
            f"{segmentation}: no published segmentation; run the workflow for {dataset_name} first"
        )
    raw = open_raw(dataset)  # through the dataset's roi: the frame of every result
    res = raw.resolution_nm or dataset.resolution_nm
    offset = dataset.roi_offset_zyx  # where the results lie in the raw volume
    layers = []
    export_layer(raw, results_dir / "view" / "raw.precomputed", res, "image", config, offset)
    layers.append(("em", "view/raw.precomputed", "image"))
    mask_h5 = results_dir / "mask.h5"
    if mask_h5.is_file():
        for name in ("exclude", "boundary"):
            out = results_dir / "view" / f"{name}.precomputed"
            export_layer(f"{mask_h5}:{name}", out, res, "image", config, offset)
            layers.append((f"mask {name}", f"view/{name}.precomputed", "image"))
    layers.append(("segmentation", "segmentation.precomputed", "segmentation"))
    if supervoxels:
        from ffnflow.stages.proofread import agglomeration_graph

        cleaned, edges = agglomeration_graph(results_dir)
        out = results_dir / "view" / "supervoxels.precomputed"
        export_layer(f"{cleaned}:labels", out, res, "segmentation", config, offset, meshes=True)
        equivalences = {"equivalences": [[str(a), str(b)] for a, b in edges], "visible": False}
        layers.append(("supervoxels", "view/supervoxels.precomputed", "segmentation", equivalences))
    return layers


def serve_results(
    config: dict[str, Any],
    dataset_name: str,
    results_dir: str | Path,
    port: int = 8765,
    supervoxels: bool = False,
) -> None:
    """Export the layers, print the Neuroglancer link and serve until interrupted."""
    layers = prepare_layers(config, dataset_name, results_dir, supervoxels)
    server = make_server(results_dir, port)
    host, port = server.server_address[:2]
    state = neuroglancer_state(
        f"http://{host}:{port}", layers, dataset_config(config, dataset_name).resolution_nm
    )
    print(f"serving {Path(results_dir).resolve()} on http://{host}:{port} (Ctrl-C stops)")
    print(neuroglancer_link(state), flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
