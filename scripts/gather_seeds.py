"""Snakemake script of rule gather_seeds."""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages.seeds import run_gather_seeds

with logged_stage(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    run_gather_seeds(list(snakemake.input), snakemake.output.seeds)  # noqa: F821
