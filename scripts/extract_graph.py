"""Snakemake script of rule extract_graph."""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages.connectome import run_extract_graph

with logged_stage(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    run_extract_graph(
        snakemake.config,  # noqa: F821
        snakemake.wildcards.dataset,  # noqa: F821
        snakemake.input.segmentation,  # noqa: F821
        snakemake.output.graphml,  # noqa: F821
        snakemake.output.nodes,  # noqa: F821
        snakemake.output.edges,  # noqa: F821
        snakemake.output.summary,  # noqa: F821
        snakemake.output.plot,  # noqa: F821
    )
