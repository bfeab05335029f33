"""Column layout of the 9 GLUE tasks' TSV files, as downloaded by GLUE's script.

The same columns as fairseq's ``examples/roberta/preprocess_GLUE_tasks.sh`` (which counts from 1;
here from 0), plus WNLI, which has RTE's layout. Labels are listed in their fixed class order: class
``i`` is ``labels[i]``, whatever their frequency in the training data.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from leebert_plugin.errors import UsageError


@dataclass(frozen=True)
class Layout:
    columns: int  # tab-separated fields per row
    header: bool  # first line is a header
    inputs: Tuple[int, ...]  # column of each input sentence (input0, input1)
    label: Optional[int] = None  # label column; None: an unlabelled (test) split


@dataclass(frozen=True)
class GlueTask:
    name: str
    files: Dict[str, Tuple[str, Layout]]  # TSV stem -> (fairseq split, layout), in fairseq-preprocess order
    labels: Optional[Tuple[str, ...]]  # classes in index order; None: regression (STS-B)
    required: Tuple[str, ...] = ("train", "dev")  # TSV stems that must exist (the test files are optional)


BINARY = ("0", "1")
ENTAILMENT = ("entailment", "not_entailment")


def _task(name: str, train: Layout, test: Layout, labels: Optional[Tuple[str, ...]]) -> GlueTask:
    return GlueTask(name, {"train": ("train", train), "dev": ("valid", train), "test": ("test", test)}, labels)


PAIR = Layout(4, True, (1, 2), 3)  # index, sentence1 (question), sentence2 (sentence), label
PAIR_TEST = Layout(3, True, (1, 2))
MNLI_TEST = Layout(10, True, (8, 9))

TASKS: Dict[str, GlueTask] = {t.name: t for t in (
    _task("CoLA", Layout(4, False, (3,), 1), Layout(2, True, (1,)), BINARY),  # source, label, *, sentence
    _task("SST-2", Layout(2, True, (0,), 1), Layout(2, True, (1,)), BINARY),  # sentence, label / index, sentence
    _task("MRPC", Layout(5, True, (3, 4), 0), Layout(5, True, (3, 4)), BINARY),  # Quality, #1 ID, #2 ID, #1 String, #2 String
    _task("QQP", Layout(6, True, (3, 4), 5), Layout(3, True, (1, 2)), BINARY),  # id, qid1, qid2, q1, q2, is_duplicate
    _task("STS-B", Layout(10, True, (7, 8), 9), Layout(9, True, (7, 8)), None),  # ..., sentence1, sentence2, score
    _task("QNLI", PAIR, PAIR_TEST, ENTAILMENT),
    _task("RTE", PAIR, PAIR_TEST, ENTAILMENT),
    _task("WNLI", PAIR, PAIR_TEST, BINARY),
    GlueTask("MNLI", {  # ..., sentence1, sentence2, label1, gold_label (train) / label1..label5, gold_label (dev)
        "train": ("train", Layout(12, True, (8, 9), 11)),
        "dev_matched": ("valid", Layout(16, True, (8, 9), 15)),
        "dev_mismatched": ("valid1", Layout(16, True, (8, 9), 15)),
        "test_matched": ("test", MNLI_TEST),
        "test_mismatched": ("test1", MNLI_TEST),
    }, ("entailment", "neutral", "contradiction"), required=("train", "dev_matched", "dev_mismatched")),
)}


# Training examples per task: the rows of GLUE's train.tsv (as the GLUE paper's Table 1 and the
# Hugging Face ``glue`` dataset count them). What two-stage configs need to know where stage 2 starts.
TRAIN_SIZES: Dict[str, int] = {"CoLA": 8551, "SST-2": 67349, "MRPC": 3668, "QQP": 363846, "STS-B": 5749,
                               "QNLI": 104743, "RTE": 2490, "WNLI": 635, "MNLI": 392702}


def get_task(name: str) -> GlueTask:
    """The task of that name (case and ``-`` insensitive: ``sts-b``, ``STSB``)."""
    key = name.replace("-", "").lower()
    for task in TASKS.values():
        if task.name.replace("-", "").lower() == key:
            return task
    raise UsageError(f"unknown GLUE task {name!r}", f"use one of {', '.join(TASKS)}")
