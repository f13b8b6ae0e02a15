"""Snakemake script of rule render_overlays."""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages.report import run_render_overlays

with logged_stage(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    run_render_overlays(
        snakemake.config,  # noqa: F821
        snakemake.wildcards.dataset,  # noqa: F821
        snakemake.input.segmentation,  # noqa: F821
        snakemake.output.overlays,  # noqa: F821
        mask_h5=snakemake.input.get("mask"),  # noqa: F821
    )
