# FFN training on demand: partition-balanced centres per dataset, then the training run.
# `snakemake results/ffn_training/ffn.pt`, or set ffn.checkpoint to that file to segment with it.

FFN_TRAINED = "results/ffn_training/ffn.pt"

# ffn.checkpoint may name the model this workflow trains: keep that path relative so that
# `segment` depends on rule train_ffn (workflow_path() made it absolute as it does not
# exist yet). The dict is updated in place, so the rules parsed earlier see it too.
if config["ffn"]["checkpoint"] == os.path.join(workflow.basedir, FFN_TRAINED):
    config["ffn"]["checkpoint"] = FFN_TRAINED

if config["ffn_training"]["init_checkpoint"]:
    config["ffn_training"]["init_checkpoint"] = workflow_path(
        config["ffn_training"]["init_checkpoint"]
    )


rule prepare_ffn_examples:
    output:
        examples="results/ffn_training/examples/{dataset}.npz",
    log:
        "results/ffn_training/logs/prepare_ffn_examples_{dataset}.log",
    benchmark:
        "results/ffn_training/benchmarks/prepare_ffn_examples_{dataset}.tsv"
    conda:
        "../envs/ffnflow.yaml"
    threads: 1
    resources:
        mem_mb=8000,
    params:
        examples=ffn_examples_params,
        code=stage_code("train_ffn"),
    script:
        "../scripts/prepare_ffn_examples.py"


rule train_ffn:
    input:
        unpack(ffn_training_inputs),
    output:
        checkpoint=FFN_TRAINED,
        log_csv="results/ffn_training/training_log.csv",
        curve=report("results/ffn_training/loss_curve.png", category="FFN training"),
    log:
        "results/ffn_training/logs/train_ffn.log",
    benchmark:
        "results/ffn_training/benchmarks/train_ffn.tsv"
    conda:
        "../envs/ffnflow.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
    params:
        ffn_training=ffn_training_params(),
        code=stage_code("train_ffn"),
    script:
        "../scripts/train_ffn.py"
