"""Snakemake script of rule gather_mask: the blocks' predictions -> results/NAME/mask.h5."""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages.mask import run_gather_mask

with logged_stage(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    run_gather_mask(
        snakemake.config,  # noqa: F821
        snakemake.wildcards.dataset,  # noqa: F821
        dict(snakemake.input.items()),  # noqa: F821 (block id -> block mask.h5)
        snakemake.output.mask,  # noqa: F821
    )
