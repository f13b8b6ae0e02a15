# Evaluation against ground truth (datasets with `labels:` only): VI, adapted Rand error
# and expected run length of the final segmentation and of every stage before it.


rule evaluate:
    input:
        unpack(evaluation_inputs),
    output:
        metrics=report(
            result("{dataset}", "metrics.json"),
            caption="../report/metrics.rst",
            category="evaluation",
        ),
    log:
        result("{dataset}", "logs/evaluate.log"),
    conda:
        "../envs/ffnflow.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        dataset=dataset_params("labels", "roi"),
        evaluation=config["evaluation"],
        code=stage_code("evaluate"),
    script:
        "../scripts/evaluate.py"
