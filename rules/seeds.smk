# Stage 2: seed placement (distance-transform peaks), global z,y,x voxel coordinates.


rule place_seeds:
    output:
        seeds=result("{dataset}", "seeds.csv"),
    log:
        result("{dataset}", "logs/place_seeds.log"),
    conda:
        "../envs/ffnflow.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    script:
        "../scripts/place_seeds.py"
