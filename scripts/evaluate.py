"""Snakemake script of rule evaluate."""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages.evaluate import run_evaluate

with logged_stage(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    run_evaluate(
        snakemake.config,  # noqa: F821
        snakemake.wildcards.dataset,  # noqa: F821
        f"{snakemake.input.segmentation}:labels",  # noqa: F821
        snakemake.output.metrics,  # noqa: F821
        stages={
            name: f"{path}:labels"
            for name, path in snakemake.input.items()  # noqa: F821
            if name != "segmentation"
        },
    )
