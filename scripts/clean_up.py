"""Snakemake script of rule clean_up."""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages.agglomerate import run_clean_up

with logged_stage(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    run_clean_up(
        snakemake.config,  # noqa: F821
        snakemake.wildcards.dataset,  # noqa: F821
        snakemake.input.ffn,  # noqa: F821
        snakemake.output.segmentation,  # noqa: F821
        snakemake.output.counters,  # noqa: F821
        reverse_h5=snakemake.input.get("reverse_pass"),  # noqa: F821
        mask_h5=snakemake.input.get("mask"),  # noqa: F821
    )
