"""Snakemake script of rule place_seeds."""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages import run_place_seeds

with logged_stage(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    run_place_seeds(snakemake.config, snakemake.wildcards.dataset, snakemake.output.seeds)  # noqa: F821
