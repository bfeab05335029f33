"""The GLUE configs, ``configs/<task>_<method>.yaml``, from fairseq's RoBERTa fine-tuning configs
(``scripts/make_glue_configs.py`` writes or checks them).

The batch size, learning rate, max_update, warmup, Adam and dropout settings are fairseq's
(``fairseq/examples/roberta/config/finetuning/<task>.yaml``; WNLI, which has none, takes RTE's).
The method settings are ours where the papers are silent (see README, "LeeBERT").

Two-stage configs (SmartBERT, DeeBERT) train each stage with its own linear warm-up and decay
(``lr_scheduler._name=two_stage_linear``, as both papers' code), and their ``max_update`` is
``max_epoch`` epochs of the task's GLUE training set at the config's batch size
(``max_epoch * ceil(n_train / batch)``): fairseq's figure is for its batch (32) and its 10 epochs,
and at SmartBERT's batch 16 it ended SST-2, QNLI, QQP and MNLI inside stage 1.
"""
import copy
import math
from pathlib import Path
from typing import Iterator, List, Tuple

import yaml

import fairseq

from leebert_plugin.data.glue_tasks import TRAIN_SIZES, get_task

FAIRSEQ_CONFIGS = Path(fairseq.__file__).parent / "examples" / "roberta" / "config" / "finetuning"
TASKS = {"cola": "cola", "sst_2": "sst_2", "mrpc": "mrpc", "sts_b": "sts_b", "qqp": "qqp",
         "mnli": "mnli", "qnli": "qnli", "rte": "rte", "wnli": "rte"}

# GLUE's own metric per task (fairseq's configs select on accuracy for all, STS-B on loss)
BEST_METRIC = {"cola": "mcc", "mrpc": "f1", "qqp": "f1", "sts_b": "pearson"}
# the callback ends a job that fails on a bad input in the plugin's one line, not hydra's traceback
HYDRA = {"run": {"dir": "${checkpoint.save_dir}/hydra/${now:%Y-%m-%d_%H-%M-%S}"}, "job": {"chdir": False},
         "callbacks": {"usage_errors": {"_target_": "leebert_plugin.cli.UsageErrorInOneLine"}}}
TASK_FIELDS = {"exit_policy": "none", "exit_threshold": None, "exit_thresholds": "", "exit_patience": 1, "d2_ratio": 0.5,
               "stage1_epochs": 0, "soft_gate_epochs": 0, "stage1_checkpoint": "", "stage1_only": False,
               "shorten_method": "truncate"}
MODEL = {"_name": "exit_roberta_base", "exit_layers": "", "exit_head": "pabee", "skip_gates": False,
         "skip_threshold": 0.5, "layer_projectors": False}
LOG_INTERVAL = 5
TWO_STAGE = {"exit_policy": "entropy", "exit_threshold": 0.3, "stage1_epochs": 5}
METHODS = {
    "multi_exit": {
        "criterion": {"_name": "multi_exit", "exit_weighting": "ascending", "learn_weights": False,
                      "weight_parametrization": "group_softmax"},
        "optimizer": {"_name": "adam"},
    },
    # SmartBERT: the authors' RTE recipe (run.sh): lambda .04, eta1 .01, eta2 .05, t1 .5, t2 .55,
    # lr 2e-5, batch 16, 5 + 4 epochs, AdamW wd .01 eps 1e-8, clip 1.0, warmup 10, 3 soft-gate epochs
    "smartbert": {
        "criterion": {"_name": "smartbert", "gate_lambda": 0.04, "eta1": 0.01, "eta2": 0.05, "t1": 0.5,
                      "t2": 0.55, "mask_padding": True, "mix_with_eta": False, "stage2_pairs": "all"},
        "optimizer": {"_name": "adam"},
        "adam": {"weight_decay": 0.01, "adam_betas": "(0.9,0.999)", "adam_eps": 1e-08},
        "task": {**TWO_STAGE, "soft_gate_epochs": 3},
        "model": {"exit_head": "smartbert", "skip_gates": True, "layer_projectors": True},
        "recipe": {"lr": 2e-05, "batch_size": 16, "epochs": 9, "clip_norm": 1.0, "warmup_updates": 10},
        "classification_only": True,
    },
    # DeeBERT: the same two stages without gates or contrastive terms, a pooler per exit; fairseq's
    # RoBERTa settings, each stage with its own schedule (the authors' code restarts it) and
    # fairseq's 6% warm-up of it
    "deebert": {
        "criterion": {"_name": "smartbert", "gate_lambda": 0.0, "eta1": 0.0, "eta2": 0.0, "t1": 0.5,
                      "t2": 0.55, "mask_padding": True, "mix_with_eta": False, "stage2_pairs": "all"},
        "optimizer": {"_name": "adam"},
        "task": dict(TWO_STAGE),
        "model": {"exit_head": "deebert"},
        "classification_only": True,
    },
    "leebert": {
        "criterion": {"_name": "leebert", "distill": "lae", "temperature": 1.0, "kd_weight": 1.0,
                      "exit_weighting": "uniform", "learn_weights": True,
                      "weight_parametrization": "group_softmax"},
        "optimizer": {"_name": "clo", "mode": "clo", "w_lr": None, "w_travel": 3.0, "w_weight_decay": 1e-3,
                      "w_betas": "(0.5,0.999)", "w_update_interval": 10, "xi": -1.0, "fd_eps": 0.01},
    },
}


def build(task: str, method: str) -> dict:
    base = yaml.safe_load((FAIRSEQ_CONFIGS / f"{TASKS[task]}.yaml").read_text())
    cfg = {"hydra": HYDRA}
    common = dict(base["common"])
    for key in ("fp16", "fp16_init_scale", "threshold_loss_scale", "fp16_scale_window"):
        common.pop(key, None)  # fp32: the clo meta step is not tested under fp16
    common["user_dir"] = "${oc.env:PWD}/user_dir"
    # fairseq's 200 updates between stat lines are minutes of silence on a CPU (a RoBERTa-base update
    # takes seconds there); LOG_INTERVAL updates show progress within about a minute, and cost a GPU
    # run nothing but log lines
    common["log_interval"] = LOG_INTERVAL
    regression = base["task"].get("num_classes") == 1
    if regression:  # validation gathers every prediction (Spearman): room beyond fairseq's 16 KB default
        common["all_gather_list_size"] = 1 << 20
    cfg["common"] = common
    spec = METHODS[method]
    cfg["task"] = {**base["task"], "_name": "early_exit_sentence_prediction",
                   "regression_target": regression, **TASK_FIELDS, **spec.get("task", {})}
    cfg["checkpoint"] = {**base["checkpoint"], "save_dir": "???", "load_checkpoint_on_all_dp_ranks": True,
                         "best_checkpoint_metric": BEST_METRIC.get(task, "accuracy"),
                         "maximize_best_checkpoint_metric": True}
    cfg["distributed_training"] = base["distributed_training"]
    cfg["criterion"] = copy.deepcopy(METHODS[method]["criterion"])
    cfg["dataset"] = dict(base["dataset"])
    adam = {k: v for k, v in base["optimizer"].items() if k != "_name"}
    cfg["optimizer"] = {**spec["optimizer"], **adam, **spec.get("adam", {})}
    cfg["lr_scheduler"] = dict(base["lr_scheduler"])
    cfg["optimization"] = dict(base["optimization"])
    recipe = spec.get("recipe")
    opt = cfg["optimization"]
    if recipe:
        opt["max_epoch"], opt["lr"], opt["clip_norm"] = recipe["epochs"], [recipe["lr"]], recipe["clip_norm"]
        cfg["lr_scheduler"]["warmup_updates"] = recipe["warmup_updates"]
        cfg["dataset"] = {**cfg["dataset"], "batch_size": recipe["batch_size"]}
    stage1 = spec.get("task", {}).get("stage1_epochs", 0)
    if stage1:
        opt["max_epoch"] = max(opt["max_epoch"], stage1 + 1)
        per_epoch = glue_updates_per_epoch(task, cfg["dataset"]["batch_size"])
        opt["max_update"] = opt["max_epoch"] * per_epoch
        warmup = recipe["warmup_updates"] if recipe else round(0.06 * stage1 * per_epoch)
        cfg["lr_scheduler"] = {"_name": "two_stage_linear", "warmup_updates": warmup}
    cfg["model"] = {**MODEL, **{k: v for k, v in base["model"].items() if k != "_name"}, **spec.get("model", {})}
    return cfg


def glue_updates_per_epoch(task: str, batch_size: int) -> int:
    """Updates of an epoch of the task's GLUE training set on one GPU: ``ceil(n_train / batch)``."""
    return math.ceil(TRAIN_SIZES[get_task(task.replace("_", "-")).name] / batch_size)


def render(task: str, method: str) -> str:
    head = (f"# @package _group_\n# GLUE {task.upper()} with {method}: fairseq's RoBERTa fine-tuning settings for "
            f"{TASKS[task].upper()} + the method's.\n# Generated by scripts/make_glue_configs.py from "
            "leebert_plugin/data/glue_configs.py; edit that, not this file.\n# Needs task.data=<TASK>-bin and checkpoint.restore_file=<roberta.base>/model.pt "
            "(absolute paths);\n# trains on the GPU(s) fairseq finds, else on the CPU "
            "(common.cpu=true forces the CPU).\n")
    return head + yaml.safe_dump(build(task, method), sort_keys=False, default_flow_style=False)


def names() -> Iterator[Tuple[str, str]]:
    """Every (task, method) with a config: the two-stage methods classify, so STS-B has none of theirs."""
    for task in TASKS:
        for method in METHODS:
            if not (METHODS[method].get("classification_only") and task == "sts_b"):
                yield task, method


def write_or_check(config_dir: Path, check: bool) -> List[str]:
    """Write every config into ``config_dir``, or with ``check`` write nothing: the names of those
    that are missing there or differ from what :func:`render` gives."""
    stale = []
    for task, method in names():
        path = config_dir / f"{task}_{method}.yaml"
        text = render(task, method)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path.name)
        else:
            path.write_text(text)
    return stale
