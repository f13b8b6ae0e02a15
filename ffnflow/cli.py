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
    ffnflow clean-up --config config.yaml --dataset demo --ffn ffn.h5 --out cleaned.h5 \
        --counters cleaned_counters.json
    ffnflow find-decision-points --config config.yaml --dataset demo --segmentation cleaned.h5 \
        --out decision_points.csv
    ffnflow score-pairs --config config.yaml --dataset demo --block z0_y0_x0 \
        --segmentation cleaned.h5 --points decision_points.csv --out pair_scores.csv
    ffnflow agglomerate --config config.yaml --dataset demo --segmentation cleaned.h5 \
        --scores pair_scores.csv --out agglomerated.h5 --pairs pairs.csv --counters c.json
    ffnflow fill-membranes --config config.yaml --dataset demo --segmentation agglomerated.h5 \
        --out filled.h5 --counters filled_counters.json
    ffnflow extract-graph --config config.yaml --dataset demo \
        --segmentation segmentation.h5 --out-dir results/demo
    ffnflow view --config config.yaml --dataset demo          # Neuroglancer on localhost
    ffnflow view --config config.yaml --dataset demo --supervoxels   # + agglomeration graph
    ffnflow apply-equivalences --config config.yaml --dataset demo --state edited_link.txt
    ffnflow export-morphology --config config.yaml --dataset demo --out demo_swc --meshes obj
    ffnflow export-zarr --config config.yaml --dataset demo --out demo_seg.ome.zarr
    ffnflow copy-roi --config my.yaml --dataset cutout --out cutout.h5  # e.g. from a bucket
    ffnflow import-google-weights --npz ffn_fib25_google.npz --out models/ffn_fib25_google.pt
    ffnflow predict-mask --config config.yaml --dataset demo --block z0_y0_x0 --out block_mask.h5
    ffnflow gather-mask --config config.yaml --dataset demo --block-dir results/demo/blocks \
        --out mask.h5
    ffnflow train-masknet --config train.yaml --out masknet.pt --log-csv log.csv --curve loss.png
    ffnflow prepare-ffn-examples --config train.yaml --dataset fib25 --out fib25_examples.npz
    ffnflow train-ffn --config train.yaml --examples fib25=fib25_examples.npz --out ffn.pt \
        --log-csv log.csv --curve loss.png
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
    p.add_argument("--mask", default=None, help="the dataset's mask.h5 (when masknet.enabled)")

    p = sub.add_parser("segment", help="flood-fill one block from its seeds")
    _add_config_args(p, block=True)
    p.add_argument("--seeds", required=True)
    p.add_argument("--out", required=True, help="HDF5 file; dataset 'labels' is written")
    p.add_argument("--counters", required=True, help="JSON file for counters")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    p.add_argument("--mask", default=None, help="the dataset's mask.h5 (when masknet.enabled)")

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

    p = sub.add_parser("predict-mask", help="mask net probabilities of one block")
    _add_config_args(p, block=True)
    p.add_argument("--out", required=True, help="HDF5 file; one uint8 dataset per class")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")

    p = sub.add_parser("gather-mask", help="assemble the blocks' mask predictions into mask.h5")
    _add_config_args(p)
    p.add_argument("--block-dir", required=True, help="folder with BLOCK/mask.h5 per block")
    p.add_argument("--out", required=True, help="mask.h5 (datasets boundary, exclude, ...)")

    p = sub.add_parser("train-masknet", help="train the mask net (masknet.training)")
    p.add_argument("--config", required=True, help="workflow config YAML")
    p.add_argument("--out", required=True, help="checkpoint (.pt) to write")
    p.add_argument("--log-csv", required=True, help="CSV log of the losses per step")
    p.add_argument("--curve", required=True, help="loss curve (PNG)")
    p.add_argument(
        "--state", default=None, help="training state to resume from (default OUT.state)"
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")

    p = sub.add_parser(
        "prepare-ffn-examples", help="partition-balanced FFN training centres of a dataset"
    )
    _add_config_args(p)
    p.add_argument("--out", required=True, help="examples file (.npz)")

    p = sub.add_parser("train-ffn", help="train an FFN (ffn_training)")
    p.add_argument("--config", required=True, help="workflow config YAML")
    p.add_argument(
        "--examples",
        nargs="*",
        default=[],
        metavar="NAME=FILE",
        help="examples file per training dataset (default results/ffn_training/examples/NAME.npz, made if missing)",
    )
    p.add_argument("--out", required=True, help="checkpoint (.pt) to write")
    p.add_argument("--log-csv", required=True, help="CSV log of the training steps")
    p.add_argument("--curve", required=True, help="loss curves (PNG)")
    p.add_argument(
        "--state", default=None, help="training state to resume from (default OUT.state)"
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch")

    p = sub.add_parser("clean-up", help="consensus (with --reverse) and clean-up of an FFN pass")
    _add_config_args(p)
    p.add_argument("--ffn", required=True, help="stitched FFN pass (labels HDF5)")
    p.add_argument("--reverse", default=None, help="second pass, seeds reversed (consensus)")
    p.add_argument("--mask", default=None, help="the dataset's mask.h5 (when masknet.enabled)")
    p.add_argument("--out", required=True)
    p.add_argument("--counters", required=True)

    p = sub.add_parser("find-decision-points", help="resegmentation decision points (CSV)")
    _add_config_args(p)
    p.add_argument("--segmentation", required=True)
    p.add_argument("--out", required=True)

    p = sub.add_parser("score-pairs", help="score one block's decision points by local FFN runs")
    _add_config_args(p, block=True)
    p.add_argument("--segmentation", required=True)
    p.add_argument("--points", required=True)
    p.add_argument("--mask", default=None, help="the dataset's mask.h5 (when masknet.enabled)")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=None)

    p = sub.add_parser("agglomerate", help="merge the scored pairs")
    _add_config_args(p)
    p.add_argument("--segmentation", required=True)
    p.add_argument("--scores", required=True, nargs="+", help="pair_scores.csv of every block")
    p.add_argument("--out", required=True)
    p.add_argument("--pairs", required=True)
    p.add_argument("--counters", required=True)

    p = sub.add_parser("fill-membranes", help="give unlabelled membrane voxels to a neighbour")
    _add_config_args(p)
    p.add_argument("--segmentation", required=True, help="labels HDF5 (e.g. agglomerated.h5)")
    p.add_argument("--mask", default=None, help="the dataset's mask.h5 (when masknet.enabled)")
    p.add_argument("--out", required=True)
    p.add_argument("--counters", required=True)

    p = sub.add_parser("extract-graph", help="connectome graph of a segmentation")
    _add_config_args(p)
    p.add_argument("--segmentation", required=True, help="labels HDF5 (segmentation.h5)")
    p.add_argument("--out-dir", required=True, help="writes connectome.graphml and tables here")

    p = sub.add_parser("view", help="serve the results on localhost and print a Neuroglancer link")
    _add_config_args(p)
    p.add_argument("--results", default=None, help="results directory (default results/NAME)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument(
        "--supervoxels",
        action="store_true",
        help="add layer 'supervoxels': cleaned.h5 with the agglomeration's merges as "
        "Neuroglancer equivalences, for proofreading",
    )

    p = sub.add_parser(
        "apply-equivalences",
        help="the segmentation that the equivalences of an edited Neuroglancer state make of "
        "the supervoxels (after view --supervoxels)",
    )
    _add_config_args(p)
    p.add_argument(
        "--state", required=True, help="Neuroglancer link, JSON state, or a file holding either"
    )
    p.add_argument("--layer", default="supervoxels", help="segmentation layer of the state")
    p.add_argument("--results", default=None, help="results directory (default results/NAME)")
    p.add_argument("--out", default=None, help="HDF5 to write (default RESULTS/proofread.h5)")

    p = sub.add_parser(
        "export-morphology",
        help="skeletons of the published segments as SWC files (meshes as OBJ/PLY)",
    )
    _add_config_args(p)
    p.add_argument("--out", required=True, help="new folder for <id>.swc files")
    p.add_argument("--results", default=None, help="results directory (default results/NAME)")
    p.add_argument("--ids", type=int, nargs="+", default=None, help="only these segments")
    p.add_argument("--meshes", choices=("obj", "ply"), default=None, help="also write meshes")

    p = sub.add_parser(
        "export-zarr", help="a segmentation as an OME-Zarr label image (multiscale, NGFF 0.4)"
    )
    _add_config_args(p)
    p.add_argument("--out", required=True, help="new folder, e.g. segmentation.ome.zarr")
    p.add_argument(
        "--segmentation",
        default=None,
        help="labels HDF5 (default results/NAME/segmentation.h5; any stage's file works)",
    )

    p = sub.add_parser(
        "copy-roi",
        help="copy a dataset's volumes within its roi into one HDF5 file (e.g. from a bucket)",
    )
    _add_config_args(p)
    p.add_argument("--out", required=True, help="HDF5 file to write")
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

        run_place_seeds(load_config(args.config), args.dataset, args.block, args.out, args.mask)
    elif args.command == "segment":
        from ffnflow.stages.segment import run_segment

        run_segment(
            load_config(args.config),
            args.dataset,
            args.block,
            args.seeds,
            args.out,
            args.counters,
            args.threads,
            args.mask,
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
    elif args.command == "predict-mask":
        from ffnflow.stages.mask import run_predict_mask

        run_predict_mask(load_config(args.config), args.dataset, args.block, args.out, args.threads)
    elif args.command == "gather-mask":
        from ffnflow.stages.common import block_grid, open_raw
        from ffnflow.stages.mask import run_gather_mask

        config = load_config(args.config)
        grid = block_grid(config, open_raw(dataset_config(config, args.dataset)).shape)
        files = {b: Path(args.block_dir) / b / "mask.h5" for b in grid.ids}
        run_gather_mask(config, args.dataset, files, args.out)
    elif args.command == "train-masknet":
        from ffnflow.stages.mask import run_train_masknet

        state = args.state or f"{args.out}.state"
        run_train_masknet(
            load_config(args.config), args.out, args.log_csv, args.curve, state, args.threads
        )
    elif args.command in ("prepare-ffn-examples", "train-ffn"):
        _run_ffn_training(args, load_config(args.config))
    elif args.command in STAGE4_5_COMMANDS:
        _run_stage4_5(args, load_config(args.config))
    elif args.command == "copy-roi":
        from ffnflow.stages.copy_roi import entry_text, run_copy_roi

        config = load_config(args.config)
        entry = run_copy_roi(config, args.dataset, args.out)
        has_synapses = dataset_config(config, args.dataset).synapses is not None
        print(entry_text(f"{args.dataset}_copy", entry, has_synapses))
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


STAGE4_5_COMMANDS = (
    "clean-up",
    "find-decision-points",
    "score-pairs",
    "agglomerate",
    "fill-membranes",
    "extract-graph",
    "view",
    "apply-equivalences",
    "export-morphology",
    "export-zarr",
)


def _run_stage4_5(args: argparse.Namespace, config: dict) -> None:
    from ffnflow.stages import agglomerate

    if args.command == "clean-up":
        agglomerate.run_clean_up(
            config, args.dataset, args.ffn, args.out, args.counters, args.reverse, args.mask
        )
    elif args.command == "find-decision-points":
        agglomerate.run_find_decision_points(config, args.dataset, args.segmentation, args.out)
    elif args.command == "score-pairs":
        from ffnflow.stages.score_pairs import run_score_pairs

        run_score_pairs(
            config,
            args.dataset,
            args.block,
            args.segmentation,
            args.points,
            args.out,
            args.threads,
            args.mask,
        )
    elif args.command == "agglomerate":
        agglomerate.run_agglomerate(
            config,
            args.dataset,
            args.segmentation,
            args.scores,
            args.out,
            args.pairs,
            args.counters,
        )
    elif args.command == "fill-membranes":
        agglomerate.run_fill_membranes(
            config, args.dataset, args.segmentation, args.out, args.counters, args.mask
        )
    elif args.command == "extract-graph":
        from ffnflow.stages.connectome import run_extract_graph

        out = Path(args.out_dir)
        run_extract_graph(
            config,
            args.dataset,
            args.segmentation,
            out / "connectome.graphml",
            out / "connectome_nodes.csv",
            out / "connectome_edges.csv",
            out / "connectome_summary.json",
            out / "connectome_summary.png",
        )
    elif args.command == "view":
        from ffnflow.view import serve_results

        results = args.results or f"results/{args.dataset}"
        serve_results(config, args.dataset, results, args.port, args.supervoxels)
    elif args.command == "export-morphology":
        from ffnflow.stages.export_morphology import run_export_morphology

        manifest = run_export_morphology(
            config,
            args.dataset,
            args.results or f"results/{args.dataset}",
            args.out,
            args.ids,
            args.meshes,
        )
        print(
            f"wrote {len(manifest['segments'])} skeletons to {args.out} "
            f"({len(manifest['skipped_without_skeleton'])} segments too small for one)"
        )
    elif args.command == "export-zarr":
        from ffnflow.stages.export_zarr import run_export_zarr

        segmentation = args.segmentation or f"results/{args.dataset}/segmentation.h5"
        multiscale = run_export_zarr(config, args.dataset, segmentation, args.out)
        print(f"wrote {args.out}: {len(multiscale['datasets'])} levels")
    elif args.command == "apply-equivalences":
        from ffnflow.stages.proofread import run_apply_equivalences

        results = Path(args.results or f"results/{args.dataset}")
        out = args.out or results / "proofread.h5"
        counters = run_apply_equivalences(
            config, args.dataset, results / "cleaned.h5", args.state, out, args.layer
        )
        print(f"wrote {out}: {json.dumps(counters)}")


def _run_ffn_training(args: argparse.Namespace, config: dict) -> None:
    from ffnflow.ffn.training.run import TrainingInterrupted
    from ffnflow.stages.train_ffn import run_prepare_ffn_examples, run_train_ffn

    if args.command == "prepare-ffn-examples":
        run_prepare_ffn_examples(config, args.dataset, args.out)
        return
    examples = {}
    for item in args.examples:
        name, sep, path = item.partition("=")
        if not sep:
            raise InputError(f"--examples {item!r}: expected NAME=FILE")
        examples[name] = path
    state = args.state or f"{args.out}.state"
    try:
        run_train_ffn(config, examples, args.out, args.log_csv, args.curve, state, args.threads)
    except TrainingInterrupted as exc:
        print(f"ffnflow: {exc}", file=sys.stderr)
        raise SystemExit(128 + exc.signum) from None


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
