"""Snakemake script of rule prepare_ffn_examples (one training dataset)."""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages.train_ffn import run_prepare_ffn_examples

with logged_stage(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    run_prepare_ffn_examples(
        snakemake.config,  # noqa: F821
        snakemake.wildcards.dataset,  # noqa: F821
        snakemake.output.examples,  # noqa: F821
    )
