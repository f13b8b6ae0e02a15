"""Snakemake script of rule fill_membranes."""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages.agglomerate import run_fill_membranes

with logged_stage(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    run_fill_membranes(
        snakemake.config,  # noqa: F821
        snakemake.wildcards.dataset,  # noqa: F821
        snakemake.input.segmentation,  # noqa: F821
        snakemake.output.segmentation,  # noqa: F821
        snakemake.output.counters,  # noqa: F821
        mask_h5=snakemake.input.get("mask"),  # noqa: F821
    )
