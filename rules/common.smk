# Helpers shared by all rules: validated config, dataset names and per-stage paths.

from ffnflow.config import validate_config

config.update(validate_config(config))

DATASETS = sorted(config["datasets"])


wildcard_constraints:
    dataset="|".join(DATASETS) if DATASETS else "$^",


def result(dataset, name):
    """Path of a per-dataset output: results/NAME/<name>."""
    return f"results/{dataset}/{name}"


def has_labels(dataset):
    return config["datasets"][dataset].get("labels") is not None


def all_outputs():
    """Final outputs of every configured dataset."""
    outputs = []
    for name in DATASETS:
        outputs.append(result(name, "segmentation.h5"))
        if has_labels(name):
            outputs.append(result(name, "metrics.json"))
    return outputs


def ffn_checkpoint(wildcards):
    return config["ffn"]["checkpoint"]
