"""Snakemake script of the rules segment_<dataset>_part<N> (several blocks together)."""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages.segment import run_segment_blocks

with logged_stage(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    run_segment_blocks(
        snakemake.config,  # noqa: F821
        snakemake.params.dataset_name,  # noqa: F821
        snakemake.params.block_ids,  # noqa: F821
        snakemake.input.seeds,  # noqa: F821
        snakemake.output.segmentation,  # noqa: F821
        snakemake.output.counters,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
        mask_h5=snakemake.input.get("mask"),  # noqa: F821
        reverse_seeds=snakemake.wildcards.ffn_pass == "ffn_reverse",  # noqa: F821
    )
