# Stage 2: seed placement (distance-transform peaks) per block, in global z,y,x voxels.


rule place_seeds:
    output:
        seeds=block_result("{dataset}", "{block}", "seeds.csv"),
    params:
        dataset=dataset_params(*IMAGE_KEYS),
        seeds=config["seeds"],
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
        "../scripts/place_seeds.py"


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
