"""Snakemake script of rule train_ffn (resumes from OUTPUT.state after a crash or SIGTERM)."""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages.train_ffn import run_train_ffn

config = snakemake.config  # noqa: F821 (snakemake is injected)
inputs = snakemake.input  # noqa: F821
examples = {name: inputs[name] for name in config["ffn_training"]["datasets"]}

with logged_stage(snakemake.log[0]):  # noqa: F821
    run_train_ffn(
        config,
        examples,
        snakemake.output.checkpoint,  # noqa: F821
        snakemake.output.log_csv,  # noqa: F821
        snakemake.output.curve,  # noqa: F821
        f"{snakemake.output.checkpoint}.state",  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
    )
