# Helpers shared by all rules: validated config, dataset names, block grids, per-stage paths.

import os

from ffnflow.codehash import code_fingerprint
from ffnflow.config import MERGE_DECISION_KEYS, dataset_config, validate_config
from ffnflow.stages.common import block_grid, check_roi_normalisation, open_raw
from ffnflow.volumes import Roi

config.update(validate_config(config))

DATASETS = sorted(config["datasets"])


def workflow_path(path):
    """A relative path from the config: as given if it exists, else inside the workflow."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(workflow.basedir, path)


config["ffn"]["checkpoint"] = workflow_path(config["ffn"]["checkpoint"])


def dataset_grid(dataset):
    """Block grid of a dataset, from its raw volume's shape (read when the workflow is
    parsed); the volume's centre is checked against the normalisation before any job."""
    entry = dataset_config(config, dataset)
    raw = open_raw(entry)
    check_roi_normalisation(entry, Roi.from_shape(raw.shape), "the volume")
    return block_grid(config, raw.shape)


BLOCK_IDS = {name: dataset_grid(name).ids for name in DATASETS}


wildcard_constraints:
    dataset="|".join(DATASETS) if DATASETS else "$^",
    block=r"z\d+_y\d+_x\d+",
    ffn_pass="ffn|ffn_reverse",


def block_groups(dataset):
    """The dataset's block ids in groups of ffn.blocks_per_job (one segment job each)."""
    ids = list(BLOCK_IDS[dataset])
    k = config["ffn"]["blocks_per_job"]
    return [ids[i : i + k] for i in range(0, len(ids), k)]


def result(dataset, name):
    """Path of a per-dataset output: results/NAME/<name>."""
    return f"results/{dataset}/{name}"


def block_result(dataset, block, name):
    """Path of a per-block output: results/NAME/blocks/BLOCK/<name>."""
    return f"results/{dataset}/blocks/{block}/{name}"


def all_blocks(name):
    """Input function: a per-block file of every block of the dataset."""

    def files(wildcards):
        filename = name.format(**wildcards)
        return {
            b: block_result(wildcards.dataset, b, filename)
            for b in BLOCK_IDS[wildcards.dataset]
        }

    return files


def has_labels(dataset):
    return config["datasets"][dataset].get("labels") is not None


def all_outputs():
    """Final outputs of every configured dataset."""
    outputs = []
    for name in DATASETS:
        outputs += [
            result(name, "seeds.csv"),
            result(name, "segmentation.h5"),
            result(name, "connectome.graphml"),
            result(name, "report/overlays.png"),
        ]
        if has_labels(name):
            outputs += [
                result(name, "metrics.json"),
                result(name, "report/metrics.html"),
            ]
    return outputs


def synapse_input(wildcards):
    """Input function: the dataset's synapse table as input `synapses`, if it has one."""
    synapses = config["datasets"][wildcards.dataset].get("synapses")
    return {"synapses": synapses} if synapses else {}


# -- stage 4: agglomeration (rules/agglomerate.smk) -----------------------------------------


def resegmentation_enabled():
    return config["agglomeration"]["resegmentation"]["enabled"]


def clean_up_inputs(wildcards):
    """Input function: the FFN pass, the reverse pass for the consensus, the mask net output."""
    inputs = {"ffn": result(wildcards.dataset, "ffn.h5")}
    if config["agglomeration"]["consensus"]:
        inputs["reverse_pass"] = result(wildcards.dataset, "ffn_reverse.h5")
    return {**inputs, **masknet_input(wildcards)}


def stage_segmentations(dataset):
    """Stage name -> labels file of every segmentation stage, in pipeline order."""
    stages = {
        "ffn": result(dataset, "ffn.h5"),
        "cleaned": result(dataset, "cleaned.h5"),
    }
    if resegmentation_enabled():
        stages["agglomerated"] = result(dataset, "agglomerated.h5")
    if config["agglomeration"]["membrane_fill"]["enabled"]:
        stages["filled"] = result(dataset, "filled.h5")
    return stages


def membrane_fill_input(wildcards):
    """Input function: the stage before the membrane fill (agglomerated or cleaned)."""
    stages = stage_segmentations(wildcards.dataset)
    stages.pop("filled", None)
    return list(stages.values())[-1]


def final_stage(wildcards):
    """Input function: the labels file of the last segmentation stage."""
    return list(stage_segmentations(wildcards.dataset).values())[-1]


def evaluation_inputs(wildcards):
    """Input function: the final segmentation and every stage's, for per-stage metrics."""
    return {
        "segmentation": result(wildcards.dataset, "segmentation.h5"),
        **stage_segmentations(wildcards.dataset),
    }


def ffn_checkpoint(wildcards):
    return config["ffn"]["checkpoint"]


def dataset_params(*keys):
    """Input function: these keys of the dataset's config entry (a rule reruns when they change)."""

    def params(wildcards):
        entry = config["datasets"][wildcards.dataset]
        return {key: entry.get(key) for key in keys}

    return params


IMAGE_KEYS = ("raw", "mask", "roi", "resolution_nm", "image_mean", "image_stddev")


def resegmentation_scoring_params():
    """The resegmentation options the decision points and local FFN runs depend on: all
    but the merge decision's (changing a merge threshold reruns only ``agglomerate``)."""
    reseg = config["agglomeration"]["resegmentation"]
    return {k: v for k, v in reseg.items() if k not in MERGE_DECISION_KEYS}


def stage_code(stage):
    """Fingerprint of the library code of a stage module (ffnflow.stages.<stage>)."""
    return code_fingerprint(f"ffnflow.stages.{stage}")


# FFN training (rules/train.smk).


def ffn_examples_params(wildcards):
    """What a dataset's training centres depend on (the rule reruns when it changes)."""
    t = config["ffn_training"]
    return {
        "regions": t["datasets"].get(wildcards.dataset),
        "examples": t["examples"],
        "fov_size_zyx": t["arch"]["fov_size_zyx"],
        "deltas_zyx": t["arch"]["deltas_zyx"],
        "labels": config["datasets"][wildcards.dataset].get("labels"),
        "roi": config["datasets"][wildcards.dataset].get("roi"),
    }


def ffn_training_inputs(wildcards):
    """Input function: the examples file of every training dataset, and the initial weights."""
    t = config["ffn_training"]
    inputs = {
        name: f"results/ffn_training/examples/{name}.npz" for name in t["datasets"]
    }
    if t["init_checkpoint"]:
        inputs["init_checkpoint"] = t["init_checkpoint"]
    return inputs


def ffn_training_params():
    """Training options, the inference options of validation and the training datasets' entries."""
    t = config["ffn_training"]
    names = set(t["datasets"]) | {t["validation"]["dataset"]} - {None}
    return {
        "training": t,
        "inference": config["ffn"]["inference"],
        "datasets": {name: config["datasets"].get(name) for name in sorted(names)},
    }


def results_summary():
    """Where the results of this run are, for the message at the end of a run."""
    lines = ["", "ffnflow results:"]
    for name in DATASETS:
        for file in (
            "segmentation.h5",
            "segmentation.precomputed",
            "metrics.json",
            "connectome.graphml",
            "seeds.csv",
        ):
            if os.path.exists(result(name, file)):
                lines.append(f"  {os.path.abspath(result(name, file))}")
    return "\n".join(lines)


onsuccess:
    print(results_summary())


# -- the mask net (rules/mask.smk) ---------------------------------------------------------

from ffnflow.stages.common import check_masknet_config, masknet_enabled

check_masknet_config(config)
config["masknet"]["checkpoint"] = workflow_path(config["masknet"]["checkpoint"])

MASKNET_TRAINED = "results/masknet_training/masknet.pt"


def masknet_checkpoint(wildcards):
    return config["masknet"]["checkpoint"]


def masknet_input(wildcards):
    """Input function: the dataset's mask.h5 as input `mask` when the mask net is enabled."""
    return (
        {"mask": result(wildcards.dataset, "mask.h5")}
        if masknet_enabled(config)
        else {}
    )


def masknet_input_of(dataset):
    """masknet_input for rules of one dataset (no {dataset} wildcard)."""
    return lambda wildcards: {"mask": result(dataset, "mask.h5")} if masknet_enabled(config) else {}


def masknet_use_params():
    """The masknet options that decide how mask.h5 gates seeds and flood filling."""
    if not masknet_enabled(config):
        return {"enabled": False}
    keys = (
        "enabled",
        "boundary_threshold",
        "exclude_threshold",
        "seed_min_boundary_distance",
        "seed_min_distance",
        "seed_max_local_boundary",
        "seed_local_radius",
        "fill_excluded_sections",
    )
    return {key: config["masknet"][key] for key in keys}


def masknet_prediction_params():
    """The masknet options that change its predictions (the tile size does not)."""
    return {key: config["masknet"][key] for key in ("checkpoint", "device")}


def masknet_init_checkpoint():
    """The checkpoint a mask net training run starts from, if masknet.training names one."""
    init = config["masknet"]["training"]["init_checkpoint"]
    return [init] if init else []


def masknet_training_params():
    """Training options and the config entries of the training datasets."""
    training = config["masknet"]["training"]
    return {
        "training": training,
        "datasets": {
            name: config["datasets"].get(name) for name in training["datasets"]
        },
    }
