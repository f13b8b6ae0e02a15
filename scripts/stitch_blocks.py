"""Snakemake script of rule stitch_blocks."""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages.stitch import run_stitch

with logged_stage(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    run_stitch(
        snakemake.config,  # noqa: F821
        snakemake.wildcards.dataset,  # noqa: F821
        {k: v for k, v in snakemake.input.items() if k != "seeds"},  # noqa: F821
        snakemake.output.segmentation,  # noqa: F821
        snakemake.output.counters,  # noqa: F821
        snakemake.output.merges,  # noqa: F821
        seeds_csv=snakemake.input.seeds,  # noqa: F821
    )
