"""Snakemake script of rule score_pairs (one block)."""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages.agglomerate import run_score_pairs

with logged_stage(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    run_score_pairs(
        snakemake.config,  # noqa: F821
        snakemake.wildcards.dataset,  # noqa: F821
        snakemake.wildcards.block,  # noqa: F821
        snakemake.input.segmentation,  # noqa: F821
        snakemake.input.points,  # noqa: F821
        snakemake.output.scores,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
        mask_h5=snakemake.input.get("mask"),  # noqa: F821
    )
