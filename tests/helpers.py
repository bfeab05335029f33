"""Shared builders for the tests: a tiny exit model in-process, and CLI runners."""
import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List

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


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def guarded_dir(tmp_path: Path, with_checkpoint: bool = True) -> Path:
    """A save dir that already holds files (a checkpoint too, by default) a failing run must not touch."""
    save = tmp_path / "save"
    save.mkdir()
    if with_checkpoint:
        (save / "checkpoint_best.pt").write_bytes(b"earlier result")
    (save / "notes.txt").write_text("keep me")
    return save


def assert_one_clear_error(proc, *words):
    lines = error_lines(proc.stderr)
    assert proc.returncode != 0
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    for w in words:
        assert w in lines[0], lines[0]
    assert "Fix:" in lines[0]


def assert_refused(save: Path, command: Callable[[], subprocess.CompletedProcess], *words) -> None:
    """``command`` ends in one clear error line and leaves ``save`` exactly as it was."""
    before = digest(save)
    assert_one_clear_error(command(), *words)
    assert digest(save) == before


def error_lines(stderr: str) -> List[str]:
    return [line for line in stderr.splitlines() if line.startswith("leebert-plugin: error:")]
