# Stage 2: seed placement (distance-transform peaks) per block, in global z,y,x voxels;
# with the mask net enabled, on its boundaries and never where it excludes.


rule place_seeds:
    input:
        unpack(masknet_input),
    output:
        seeds=block_result("{dataset}", "{block}", "seeds.csv"),
    log:
        block_result("{dataset}", "{block}", "logs/place_seeds.log"),
    conda:
        "../envs/ffnflow.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        dataset=dataset_params(*IMAGE_KEYS),
        seeds=config["seeds"],
        masknet=masknet_use_params(),
        blocks=config["blocks"],
        code=stage_code("seeds"),
    script:
        "../scripts/place_block_seeds.py"


rule gather_seeds:
    input:
        unpack(all_blocks("seeds.csv")),
    output:
        seeds=result("{dataset}", "seeds.csv"),
    log:
        result("{dataset}", "logs/gather_seeds.log"),
    conda:
        "../envs/ffnflow.yaml"
    threads: 1
    params:
        code=stage_code("seeds"),
    script:
        "../scripts/gather_seeds.py"
