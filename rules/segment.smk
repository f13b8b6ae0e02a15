# Stage 3: FFN flood filling per block (GPU when available, else CPU), then stitching.
# {ffn_pass} is "ffn" (seeds in order) or "ffn_reverse" (reverse order, for the consensus).


rule segment:
    input:
        unpack(masknet_input),
        seeds=block_result("{dataset}", "{block}", "seeds.csv"),
        checkpoint=ffn_checkpoint,
    output:
        segmentation=block_result("{dataset}", "{block}", "{ffn_pass}.h5"),
        counters=block_result("{dataset}", "{block}", "{ffn_pass}_counters.json"),
    log:
        block_result("{dataset}", "{block}", "logs/segment_{ffn_pass}.log"),
    benchmark:
        block_result("{dataset}", "{block}", "benchmarks/segment_{ffn_pass}.tsv")
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
        unpack(all_blocks("{ffn_pass}.h5")),
        seeds=result("{dataset}", "seeds.csv"),
    output:
        segmentation=result("{dataset}", "{ffn_pass}.h5"),
        counters=result("{dataset}", "{ffn_pass}_counters.json"),
        merges=result("{dataset}", "{ffn_pass}_stitch_merges.json"),
    log:
        result("{dataset}", "logs/stitch_blocks_{ffn_pass}.log"),
    benchmark:
        result("{dataset}", "benchmarks/stitch_blocks_{ffn_pass}.tsv")
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
