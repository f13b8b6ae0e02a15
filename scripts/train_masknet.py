"""Snakemake script of rule train_masknet (resumes from OUTPUT.state after a crash)."""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages.mask import run_train_masknet

with logged_stage(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    run_train_masknet(
        snakemake.config,  # noqa: F821
        snakemake.output.checkpoint,  # noqa: F821
        snakemake.output.log_csv,  # noqa: F821
        snakemake.output.curve,  # noqa: F821
        f"{snakemake.output.checkpoint}.state",  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
