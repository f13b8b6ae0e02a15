# Stage 3: FFN flood filling per block (GPU when available, else CPU), then stitching.


rule segment:
    input:
        unpack(masknet_input),
        seeds=block_result("{dataset}", "{block}", "seeds.csv"),
        checkpoint=ffn_checkpoint,
    output:
        segmentation=block_result("{dataset}", "{block}", "ffn.h5"),
        counters=block_result("{dataset}", "{block}", "ffn_counters.json"),
    log:
        block_result("{dataset}", "{block}", "logs/segment.log"),
    benchmark:
        block_result("{dataset}", "{block}", "benchmarks/segment.tsv")
    conda:
        "../envs/ffnflow.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
    params:
        dataset=dataset_params(*IMAGE_KEYS),
        ffn=config["ffn"],
        masknet=masknet_use_params(),
        blocks=config["blocks"],
        code=stage_code("segment"),
    script:
        "../scripts/segment.py"


rule stitch_blocks:
    input:
        unpack(all_blocks("ffn.h5")),
        seeds=result("{dataset}", "seeds.csv"),
    output:
        segmentation=result("{dataset}", "ffn.h5"),
        counters=result("{dataset}", "ffn_counters.json"),
        merges=result("{dataset}", "stitch_merges.json"),
    log:
        result("{dataset}", "logs/stitch_blocks.log"),
    benchmark:
        result("{dataset}", "benchmarks/stitch_blocks.tsv")
    conda:
        "../envs/ffnflow.yaml"
    threads: 1
    resources:
        mem_mb=8000,
    params:
        blocks=config["blocks"],
        code=stage_code("stitch"),
    script:
        "../scripts/stitch_blocks.py"


rule publish_segmentation:
    input:
        result("{dataset}", "ffn.h5"),
    output:
        segmentation=result("{dataset}", "segmentation.h5"),
        precomputed=directory(result("{dataset}", "segmentation.precomputed")),
    log:
        result("{dataset}", "logs/publish_segmentation.log"),
    conda:
        "../envs/ffnflow.yaml"
    threads: 1
    params:
        code=stage_code("publish"),
    script:
        "../scripts/publish_segmentation.py"
