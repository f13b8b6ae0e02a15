"""Snakemake script of rule place_seeds (one block), with the mask net's mask.h5 if enabled."""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages.seeds import run_place_seeds

with logged_stage(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    run_place_seeds(
        snakemake.config,  # noqa: F821
        snakemake.wildcards.dataset,  # noqa: F821
        snakemake.wildcards.block,  # noqa: F821
        snakemake.output.seeds,  # noqa: F821
        mask_h5=snakemake.input.get("mask"),  # noqa: F821
    )
