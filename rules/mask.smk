# Stage 1: the mask net - boundary and exclusion probabilities per block, assembled into
# mask.h5 (used by seeds and segmentation when masknet.enabled); training on demand.


rule predict_mask:
    input:
        checkpoint=masknet_checkpoint,
    output:
        mask=block_result("{dataset}", "{block}", "mask.h5"),
    log:
        block_result("{dataset}", "{block}", "logs/predict_mask.log"),
    benchmark:
        block_result("{dataset}", "{block}", "benchmarks/predict_mask.tsv")
    conda:
        "../envs/ffnflow.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
    params:
        dataset=dataset_params(*IMAGE_KEYS),
        masknet=masknet_prediction_params(),
        blocks=config["blocks"],
        code=stage_code("mask"),
    script:
        "../scripts/predict_mask.py"


rule gather_mask:
    input:
        unpack(all_blocks("mask.h5")),
    output:
        mask=result("{dataset}", "mask.h5"),
    log:
        result("{dataset}", "logs/gather_mask.log"),
    conda:
        "../envs/ffnflow.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        blocks=config["blocks"],
        sections={
            k: config["masknet"][k] for k in ("exclude_threshold", "section_exclude_fraction")
        },
        code=stage_code("mask"),
    script:
        "../scripts/gather_mask.py"


rule train_masknet:
    input:
        init=masknet_init_checkpoint(),
    output:
        checkpoint=MASKNET_TRAINED,
        log_csv="results/masknet_training/training_log.csv",
        curve=report("results/masknet_training/loss_curve.png", category="mask net"),
    log:
        "results/masknet_training/logs/train_masknet.log",
    benchmark:
        "results/masknet_training/benchmarks/train_masknet.tsv"
    conda:
        "../envs/ffnflow.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
    params:
        masknet=masknet_training_params(),
        code=stage_code("mask"),
    script:
        "../scripts/train_masknet.py"
