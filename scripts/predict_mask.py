"""Snakemake script of rule predict_mask (one block)."""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages.mask import run_predict_mask

with logged_stage(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    run_predict_mask(
        snakemake.config,  # noqa: F821
        snakemake.wildcards.dataset,  # noqa: F821
        snakemake.wildcards.block,  # noqa: F821
        snakemake.output.mask,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
