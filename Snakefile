# ffnflow: flood-filling network reconstruction of neurons in EM volumes.
# Stages: mask net -> seeds -> FFN segmentation -> agglomeration -> connectome, plus
# evaluation, report figures and training. See README.md.

from snakemake.utils import min_version

min_version("9.19")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/mask.smk"
include: "rules/seeds.smk"
include: "rules/segment.smk"
include: "rules/agglomerate.smk"
include: "rules/connectome.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"
include: "rules/train.smk"


rule all:
    input:
        all_outputs(),
