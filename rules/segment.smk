# Stage 3: FFN flood filling (GPU when available, else CPU).


rule segment:
    input:
        seeds=result("{dataset}", "seeds.csv"),
        checkpoint=ffn_checkpoint,
    output:
        segmentation=result("{dataset}", "ffn.h5"),
        counters=result("{dataset}", "ffn_counters.json"),
    log:
        result("{dataset}", "logs/segment.log"),
    benchmark:
        result("{dataset}", "benchmarks/segment.tsv")
    conda:
        "../envs/ffnflow.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
    script:
        "../scripts/segment.py"


rule publish_segmentation:
    input:
        result("{dataset}", "ffn.h5"),
    output:
        result("{dataset}", "segmentation.h5"),
    log:
        result("{dataset}", "logs/publish_segmentation.log"),
    conda:
        "../envs/ffnflow.yaml"
    threads: 1
    script:
        "../scripts/publish_segmentation.py"
