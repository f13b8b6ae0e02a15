"""Snakemake script of rule segment (one block)."""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages.segment import run_segment

with logged_stage(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    run_segment(
        snakemake.config,  # noqa: F821
        snakemake.wildcards.dataset,  # noqa: F821
        snakemake.wildcards.block,  # noqa: F821
        snakemake.input.seeds,  # noqa: F821
        snakemake.output.segmentation,  # noqa: F821
        snakemake.output.counters,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
        mask_h5=snakemake.input.get("mask"),  # noqa: F821
        reverse_seeds=snakemake.wildcards.ffn_pass == "ffn_reverse",  # noqa: F821
    )
