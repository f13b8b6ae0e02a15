"""The ``ffnflow`` command line: one subcommand per pipeline stage, shared with scripts/.

Examples (a volume small enough for one block has the block ``z0_y0_x0``)::

    ffnflow blocks --config config.yaml --dataset demo
    ffnflow place-seeds --config config.yaml --dataset demo --block z0_y0_x0 --out seeds.csv
    ffnflow segment --config config.yaml --dataset demo --block z0_y0_x0 --seeds seeds.csv \
        --out block.h5 --counters block_counters.json
    ffnflow stitch --config config.yaml --dataset demo --block-dir results/demo/blocks \
        --out ffn.h5 --counters ffn_counters.json --merges merges.json
    ffnflow evaluate --config config.yaml --dataset demo --segmentation ffn.h5:labels \
        --out metrics.json
    ffnflow import-google-weights --npz ffn_fib25_google.npz --out models/ffn_fib25_google.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from ffnflow.errors import InputError


def _add_config_args(parser: argparse.ArgumentParser, block: bool = False) -> None:
    parser.add_argument("--config", required=True, help="workflow config YAML")
    parser.add_argument("--dataset", required=True, help="dataset NAME under datasets:")
    if block:
        parser.add_argument("--block", default="z0_y0_x0", help="block id (default z0_y0_x0)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ffnflow", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate-config", help="check a config file and print it with defaults")
    p.add_argument("config")

    p = sub.add_parser("blocks", help="list a dataset's blocks with their write/read ROIs")
    _add_config_args(p)

    p = sub.add_parser("place-seeds", help="place FFN seeds of one block (CSV z,y,x)")
    _add_config_args(p, block=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("segment", help="flood-fill one block from its seeds")
    _add_config_args(p, block=True)
    p.add_argument("--seeds", required=True)
    p.add_argument("--out", required=True, help="HDF5 file; dataset 'labels' is written")
    p.add_argument("--counters", required=True, help="JSON file for counters")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")

    p = sub.add_parser("stitch", help="stitch block segmentations into one volume")
    _add_config_args(p)
    p.add_argument("--block-dir", required=True, help="folder with BLOCK/ffn.h5 per block")
    p.add_argument("--out", required=True)
    p.add_argument("--counters", required=True)
    p.add_argument("--merges", required=True)

    p = sub.add_parser("evaluate", help="VI and adapted Rand error against the labels")
    _add_config_args(p)
    p.add_argument("--segmentation", required=True, help="volume spec, e.g. ffn.h5:labels")
    p.add_argument("--out", required=True)

    p = sub.add_parser("import-google-weights", help="convert google/ffn npz weights")
    p.add_argument("--npz", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--resolution-nm", type=float, nargs=3, default=(10.0, 10.0, 10.0))
    p.add_argument("--image-mean", type=float, default=128.0)
    p.add_argument("--image-stddev", type=float, default=33.0)
    return parser


def run(args: argparse.Namespace) -> None:
    # Stage modules are imported here so that `ffnflow --help` stays fast.
    from ffnflow.config import dataset_config, load_config

    if args.command == "validate-config":
        print(json.dumps(load_config(args.config), indent=2))
    elif args.command == "blocks":
        from ffnflow.stages.common import block_grid, open_raw

        config = load_config(args.config)
        grid = block_grid(config, open_raw(dataset_config(config, args.dataset)).shape)
        for block in grid:
            print(f"{block.id}\twrite {block.write_roi}\tread {block.read_roi}")
    elif args.command == "place-seeds":
        from ffnflow.stages.seeds import run_place_seeds

        run_place_seeds(load_config(args.config), args.dataset, args.block, args.out)
    elif args.command == "segment":
        from ffnflow.stages.segment import run_segment

        run_segment(
            load_config(args.config), args.dataset, args.block, args.seeds, args.out,
            args.counters, args.threads,
        )
    elif args.command == "stitch":
        from ffnflow.stages.common import block_grid, open_raw
        from ffnflow.stages.stitch import run_stitch

        config = load_config(args.config)
        grid = block_grid(config, open_raw(dataset_config(config, args.dataset)).shape)
        files = {b: Path(args.block_dir) / b / "ffn.h5" for b in grid.ids}
        run_stitch(config, args.dataset, files, args.out, args.counters, args.merges)
    elif args.command == "evaluate":
        from ffnflow.stages.evaluate import run_evaluate

        metrics = run_evaluate(load_config(args.config), args.dataset, args.segmentation, args.out)
        print(json.dumps(metrics, indent=2))
    elif args.command == "import-google-weights":
        from ffnflow.ffn.model import ConvStack3D, import_google_npz, save_checkpoint

        arch, state = import_google_npz(args.npz)
        model = ConvStack3D(arch)
        model.load_state_dict(state)
        save_checkpoint(
            args.out,
            model,
            {"image_mean": args.image_mean, "image_stddev": args.image_stddev},
            tuple(args.resolution_nm),
            provenance=f"google/ffn weights imported from {args.npz} (Apache-2.0)",
        )
        print(f"wrote {args.out}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        run(args)
    except InputError as exc:
        print(f"ffnflow: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
