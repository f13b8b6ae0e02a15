# Evaluation against ground truth (datasets with `labels:` only).


rule evaluate:
    input:
        segmentation=result("{dataset}", "segmentation.h5"),
    output:
        metrics=result("{dataset}", "metrics.json"),
    log:
        result("{dataset}", "logs/evaluate.log"),
    conda:
        "../envs/ffnflow.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        dataset=dataset_params("labels"),
        code=stage_code("evaluate"),
    script:
        "../scripts/evaluate.py"
