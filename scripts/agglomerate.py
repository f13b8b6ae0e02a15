"""Snakemake script of rule agglomerate."""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages.agglomerate import run_agglomerate

with logged_stage(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    run_agglomerate(
        snakemake.config,  # noqa: F821
        snakemake.wildcards.dataset,  # noqa: F821
        snakemake.input.segmentation,  # noqa: F821
        [v for k, v in snakemake.input.items() if k != "segmentation"],  # noqa: F821
        snakemake.output.segmentation,  # noqa: F821
        snakemake.output.pairs,  # noqa: F821
        snakemake.output.counters,  # noqa: F821
    )
