"""The ``ffnflow`` command line: one subcommand per pipeline stage, shared with scripts/.

Examples::

    ffnflow place-seeds --config config.yaml --dataset demo --out results/demo/seeds.csv
    ffnflow segment --config config.yaml --dataset demo --seeds results/demo/seeds.csv \
        --out results/demo/ffn.h5 --counters results/demo/ffn_counters.json
    ffnflow evaluate --config config.yaml --dataset demo \
        --segmentation results/demo/ffn.h5:labels --out results/demo/metrics.json
    ffnflow import-google-weights --npz ffn_fib25_google.npz --out models/ffn_fib25_google.pt
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from ffnflow.errors import InputError


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="workflow config YAML")
    parser.add_argument("--dataset", required=True, help="dataset NAME under datasets:")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ffnflow", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate-config", help="check a config file and print it with defaults")
    p.add_argument("config")

    p = sub.add_parser("place-seeds", help="place FFN seeds (CSV z,y,x)")
    _add_config_args(p)
    p.add_argument("--out", required=True)

    p = sub.add_parser("segment", help="flood-fill a dataset from its seeds")
    _add_config_args(p)
    p.add_argument("--seeds", required=True)
    p.add_argument("--out", required=True, help="HDF5 file; dataset 'labels' is written")
    p.add_argument("--counters", required=True, help="JSON file for counters")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")

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
    # Imported here so that `ffnflow --help` stays fast.
    from ffnflow import stages
    from ffnflow.config import load_config

    if args.command == "validate-config":
        print(json.dumps(load_config(args.config), indent=2))
    elif args.command == "place-seeds":
        stages.run_place_seeds(load_config(args.config), args.dataset, args.out)
    elif args.command == "segment":
        stages.run_segment(
            load_config(args.config), args.dataset, args.seeds, args.out, args.counters,
            args.threads,
        )
    elif args.command == "evaluate":
        metrics = stages.run_evaluate(load_config(args.config), args.dataset, args.segmentation, args.out)
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
