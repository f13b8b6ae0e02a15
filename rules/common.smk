# Helpers shared by all rules: validated config, dataset names and per-stage paths.

import os

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


def workflow_path(path):
    """A relative path from the config: as given if it exists, else inside the workflow."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(workflow.basedir, path)


config["ffn"]["checkpoint"] = workflow_path(config["ffn"]["checkpoint"])


def ffn_checkpoint(wildcards):
    return config["ffn"]["checkpoint"]


def results_summary():
    """Where the results of this run are, for the message at the end of a run."""
    lines = ["", "ffnflow results:"]
    for name in DATASETS:
        for file in ("segmentation.h5", "metrics.json", "seeds.csv", "ffn_counters.json"):
            if os.path.exists(result(name, file)):
                lines.append(f"  {os.path.abspath(result(name, file))}")
    return "\n".join(lines)


onsuccess:
    print(results_summary())
