"""Shared builders for the tests: a tiny exit model in-process, and CLI runners."""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import torch
from fairseq.data import Dictionary

import leebert_plugin  # noqa: F401  (registers everything)
from leebert_plugin.data.synthetic import random_token_batch
from leebert_plugin.models.exit_roberta import ExitRobertaModel, exit_roberta_tiny_architecture

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HEAD = "sentence_classification_head"


class _Task:
    def __init__(self, dictionary: Dictionary):
        self.source_dictionary = dictionary

    def max_positions(self) -> int:
        return 64


def tiny_dictionary(n: int = 50) -> Dictionary:
    d = Dictionary()
    for i in range(n):
        d.add_symbol(f"w{i}")
    return d


def tiny_model(num_classes: int = 3, seed: int = 0, **overrides) -> ExitRobertaModel:
    """A 4-layer, 64-dim exit_roberta with random weights, in eval mode."""
    torch.manual_seed(seed)
    args = argparse.Namespace(max_positions=64, **overrides)
    exit_roberta_tiny_architecture(args)
    model = ExitRobertaModel.build_model(args, _Task(tiny_dictionary()))
    model.register_classification_head(HEAD, num_classes=num_classes)
    return model.eval()


def random_batch(model: ExitRobertaModel, bsz: int, seed: int = 1, min_len: int = 3, max_len: int = 20):
    """Right-padded token batch with varied lengths, first token <s>."""
    return random_token_batch(model.encoder.dictionary, bsz, min_len, max_len, seed)


def run(cmd: List[str], cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def json_records(stdout: str, tag: str) -> List[Dict[str, str]]:
    """The JSON stat lines fairseq prints with --log-format json for one subset tag."""
    out = []
    for line in stdout.splitlines():
        if (f"| {tag} |" in line or f"][{tag}][" in line) and "{" in line:
            out.append(json.loads(line[line.index("{"):]))
    return out


def error_lines(stderr: str) -> List[str]:
    return [line for line in stderr.splitlines() if line.startswith("leebert-plugin: error:")]
