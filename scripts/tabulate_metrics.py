"""Snakemake script of rule tabulate_metrics."""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages.report import run_tabulate_metrics

with logged_stage(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    run_tabulate_metrics(
        snakemake.input.metrics,  # noqa: F821
        snakemake.output.table,  # noqa: F821
        f"{snakemake.wildcards.dataset}: metrics per stage",  # noqa: F821
    )
