"""Snakemake script of rule publish_segmentation: the last stage becomes segmentation.h5."""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages.publish import run_publish

with logged_stage(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    run_publish(
        snakemake.config,  # noqa: F821
        snakemake.wildcards.dataset,  # noqa: F821
        snakemake.input[0],  # noqa: F821
        snakemake.output.segmentation,  # noqa: F821
        snakemake.output.precomputed,  # noqa: F821
    )
