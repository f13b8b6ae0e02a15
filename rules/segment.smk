# Stage 3: FFN flood filling per block (GPU when available, else CPU), then stitching.
# {ffn_pass} is "ffn" (seeds in order) or "ffn_reverse" (reverse order, for the consensus).


if config["ffn"]["blocks_per_job"] == 1:

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


else:
    # ffn.blocks_per_job > 1: one job per group of blocks of a dataset, their FOVs batched.
    for _dataset in DATASETS:
        for _part, _blocks in enumerate(block_groups(_dataset)):

            rule:
                name:
                    f"segment_{_dataset}_part{_part}"
                input:
                    unpack(masknet_input_of(_dataset)),
                    seeds=[block_result(_dataset, b, "seeds.csv") for b in _blocks],
                    checkpoint=ffn_checkpoint,
                output:
                    segmentation=[block_result(_dataset, b, "{ffn_pass}.h5") for b in _blocks],
                    counters=[
                        block_result(_dataset, b, "{ffn_pass}_counters.json") for b in _blocks
                    ],
                log:
                    result(_dataset, f"logs/segment_part{_part}_{{ffn_pass}}.log"),
                benchmark:
                    result(_dataset, f"benchmarks/segment_part{_part}_{{ffn_pass}}.tsv")
                conda:
                    "../envs/ffnflow.yaml"
                threads: 16
                resources:
                    gpu=1,
                    mem_mb=16000,
                    runtime=240,
                params:
                    dataset_name=_dataset,
                    dataset={k: config["datasets"][_dataset].get(k) for k in IMAGE_KEYS},
                    block_ids=_blocks,
                    ffn=config["ffn"],
                    masknet=masknet_use_params(),
                    blocks=config["blocks"],
                    code=stage_code("segment"),
                script:
                    "../scripts/segment_blocks.py"


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
