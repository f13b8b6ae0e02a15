# Figures for `snakemake --report report.html`: slice overlays of raw, mask and
# segmentation, and the metrics of every stage as a table.


rule render_overlays:
    input:
        unpack(masknet_input),
        segmentation=result("{dataset}", "segmentation.h5"),
    output:
        overlays=report(
            result("{dataset}", "report/overlays.png"),
            caption="../report/overlays.rst",
            category="segmentation",
        ),
    log:
        result("{dataset}", "logs/render_overlays.log"),
    conda:
        "../envs/ffnflow.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        dataset=dataset_params(*IMAGE_KEYS),
        masknet=masknet_use_params(),
        code=stage_code("report"),
    script:
        "../scripts/render_overlays.py"


rule tabulate_metrics:
    input:
        metrics=result("{dataset}", "metrics.json"),
    output:
        table=report(
            result("{dataset}", "report/metrics.html"),
            caption="../report/metrics.rst",
            category="evaluation",
        ),
    log:
        result("{dataset}", "logs/tabulate_metrics.log"),
    conda:
        "../envs/ffnflow.yaml"
    threads: 1
    params:
        code=stage_code("report"),
    script:
        "../scripts/tabulate_metrics.py"
