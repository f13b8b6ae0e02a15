"""Snakemake script of rule find_decision_points."""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages.agglomerate import run_find_decision_points

with logged_stage(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    run_find_decision_points(
        snakemake.config,  # noqa: F821
        snakemake.wildcards.dataset,  # noqa: F821
        snakemake.input.segmentation,  # noqa: F821
        snakemake.output.points,  # noqa: F821
    )
