# Stage 4: consensus and clean-up of the FFN pass, then agglomeration by resegmentation
# (decision points, per-block scoring by local FFN runs, merging), then the membranes left
# unlabelled between segments are given to a neighbour. The last stage's
# labels are published as segmentation.h5 and a precomputed layer with meshes and skeletons.


rule clean_up:
    input:
        unpack(clean_up_inputs),
    output:
        segmentation=result("{dataset}", "cleaned.h5"),
        counters=result("{dataset}", "cleaned_counters.json"),
    log:
        result("{dataset}", "logs/clean_up.log"),
    benchmark:
        result("{dataset}", "benchmarks/clean_up.tsv")
    conda:
        "../envs/ffnflow.yaml"
    threads: 1
    resources:
        mem_mb=8000,
    params:
        dataset=dataset_params("mask", "roi"),
        consensus=config["agglomeration"]["consensus"],
        cleanup=config["agglomeration"]["cleanup"],
        masknet=masknet_use_params(),
        code=stage_code("agglomerate"),
    script:
        "../scripts/clean_up.py"


rule find_decision_points:
    input:
        segmentation=result("{dataset}", "cleaned.h5"),
    output:
        points=result("{dataset}", "decision_points.csv"),
    log:
        result("{dataset}", "logs/find_decision_points.log"),
    conda:
        "../envs/ffnflow.yaml"
    threads: 1
    resources:
        mem_mb=8000,
    params:
        resegmentation=resegmentation_scoring_params(),
        code=stage_code("agglomerate"),
    script:
        "../scripts/find_decision_points.py"


rule score_pairs:
    input:
        unpack(masknet_input),
        segmentation=result("{dataset}", "cleaned.h5"),
        points=result("{dataset}", "decision_points.csv"),
        checkpoint=ffn_checkpoint,
    output:
        scores=block_result("{dataset}", "{block}", "pair_scores.csv"),
    log:
        block_result("{dataset}", "{block}", "logs/score_pairs.log"),
    benchmark:
        block_result("{dataset}", "{block}", "benchmarks/score_pairs.tsv")
    conda:
        "../envs/ffnflow.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
    params:
        dataset=dataset_params(*IMAGE_KEYS),
        ffn=config["ffn"],
        resegmentation=resegmentation_scoring_params(),
        code=stage_code("score_pairs"),
    script:
        "../scripts/score_pairs.py"


rule agglomerate:
    input:
        unpack(all_blocks("pair_scores.csv")),
        segmentation=result("{dataset}", "cleaned.h5"),
    output:
        segmentation=result("{dataset}", "agglomerated.h5"),
        pairs=result("{dataset}", "agglomeration_pairs.csv"),
        counters=result("{dataset}", "agglomeration_counters.json"),
    log:
        result("{dataset}", "logs/agglomerate.log"),
    conda:
        "../envs/ffnflow.yaml"
    threads: 1
    resources:
        mem_mb=8000,
    params:
        resegmentation=config["agglomeration"]["resegmentation"],
        code=stage_code("agglomerate"),
    script:
        "../scripts/agglomerate.py"


rule fill_membranes:
    input:
        unpack(masknet_input),
        segmentation=membrane_fill_input,
    output:
        segmentation=result("{dataset}", "filled.h5"),
        counters=result("{dataset}", "filled_counters.json"),
    log:
        result("{dataset}", "logs/fill_membranes.log"),
    benchmark:
        result("{dataset}", "benchmarks/fill_membranes.tsv")
    conda:
        "../envs/ffnflow.yaml"
    threads: 1
    resources:
        mem_mb=8000,
    params:
        dataset=dataset_params(*IMAGE_KEYS),
        membrane_fill=config["agglomeration"]["membrane_fill"],
        masknet=masknet_use_params(),
        code=stage_code("agglomerate"),
    script:
        "../scripts/fill_membranes.py"


rule publish_segmentation:
    input:
        final_stage,
    output:
        segmentation=result("{dataset}", "segmentation.h5"),
        precomputed=directory(result("{dataset}", "segmentation.precomputed")),
    log:
        result("{dataset}", "logs/publish_segmentation.log"),
    benchmark:
        result("{dataset}", "benchmarks/publish_segmentation.tsv")
    conda:
        "../envs/ffnflow.yaml"
    threads: 1
    resources:
        mem_mb=8000,
    params:
        code=stage_code("publish"),
    script:
        "../scripts/publish_segmentation.py"
