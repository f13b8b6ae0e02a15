"""Snakemake script of rule publish_segmentation: the final stage output becomes segmentation.h5."""

from ffnflow.snakemake_support import logged_stage
from ffnflow.stages import copy_file

with logged_stage(snakemake.log[0]):  # noqa: F821 (snakemake is injected)
    copy_file(snakemake.input[0], snakemake.output[0])  # noqa: F821
