"""Snakemake script of rule score_pairs (one block).

Guarded by ``__main__``: on the CPU the pairs are scored in spawned worker processes,
which import this file again.
"""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages.score_pairs import run_score_pairs

if __name__ == "__main__":
    with logged_stage(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
        run_score_pairs(
            snakemake.config,  # noqa: F821
            snakemake.wildcards.dataset,  # noqa: F821
            snakemake.wildcards.block,  # noqa: F821
            snakemake.input.segmentation,  # noqa: F821
            snakemake.input.points,  # noqa: F821
            snakemake.output.scores,  # noqa: F821
            threads=snakemake.threads,  # noqa: F821
            mask_h5=snakemake.input.get("mask"),  # noqa: F821
        )
