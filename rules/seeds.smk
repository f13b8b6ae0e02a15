# Stage 2: seed placement (distance-transform peaks) per block, in global z,y,x voxels;
# with the mask net enabled, on its boundaries and never where it excludes.


rule place_seeds:
    input:
        unpack(masknet_input),
    output:
        seeds=block_result("{dataset}", "{block}", "seeds.csv"),
    params:
        dataset=dataset_params(*IMAGE_KEYS),
        seeds=config["seeds"],
        masknet=masknet_use_params(),
        blocks=config["blocks"],
        code=stage_code("seeds"),
    log:
        block_result("{dataset}", "{block}", "logs/place_seeds.log"),
    conda:
        "../envs/ffnflow.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    script:
        "../scripts/place_block_seeds.py"


rule gather_seeds:
    input:
        unpack(all_blocks("seeds.csv")),
    output:
        seeds=result("{dataset}", "seeds.csv"),
    params:
        code=stage_code("seeds"),
    log:
        result("{dataset}", "logs/gather_seeds.log"),
    conda:
        "../envs/ffnflow.yaml"
    threads: 1
    script:
        "../scripts/gather_seeds.py"
