"""Session fixtures: a small real data set preprocessed with fairseq, and one trained tiny model."""
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import BIN, ROOT, run  # noqa: E402

from leebert_plugin.data.sentencepiece_glue import preprocess_subset  # noqa: E402


@pytest.fixture(scope="session")
def mr_bin(tmp_path_factory) -> Path:
    """400/80/80 bundled movie-review snippets, sentencepiece + fairseq-preprocess."""
    out = tmp_path_factory.mktemp("mr-bin")
    preprocess_subset(ROOT / "data" / "mr", out, {"train": 400, "dev": 80, "test": 80}, vocab_size=600)
    return out


@pytest.fixture(scope="session")
def regression_bin(mr_bin, tmp_path_factory) -> Path:
    """The bundled data as a regression task (STS-B's layout): the 0/1 labels as scores."""
    data = tmp_path_factory.mktemp("regression") / "data"
    shutil.copytree(mr_bin, data)
    for split in ("train", "valid"):
        shutil.copy(data / "raw" / f"{split}.label", data / "label" / f"{split}.label")
    return data


def hydra_train(config: str, *overrides: str):
    return run([str(BIN / "fairseq-hydra-train"), "--config-dir", "configs", "--config-name", config,
                *overrides])


@pytest.fixture(scope="session")
def trained(mr_bin, tmp_path_factory) -> Path:
    """The tiny exit model after 5 epochs of the bundled demo config; returns its save dir."""
    save = tmp_path_factory.mktemp("trained")
    proc = hydra_train("mr_multi_exit", f"task.data={mr_bin}", f"checkpoint.save_dir={save}",
                       "optimization.max_epoch=5", "optimization.max_update=125",
                       "lr_scheduler.warmup_updates=10", "dataset.batch_size=16")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (save / "train.stdout").write_text(proc.stdout)
    return save


TINY = ["--encoder-layers", "4", "--encoder-embed-dim", "64", "--encoder-ffn-embed-dim", "128",
        "--encoder-attention-heads", "2"]


@pytest.fixture(scope="session")
def plain_roberta(mr_bin, tmp_path_factory) -> Path:
    """A plain fairseq `roberta` classifier, trained by fairseq-train itself (argparse checkpoint)."""
    save = tmp_path_factory.mktemp("plain-roberta")
    proc = run([str(BIN / "fairseq-train"), str(mr_bin), "--task", "sentence_prediction",
                "--criterion", "sentence_prediction", "--arch", "roberta", *TINY,
                "--max-positions", "256", "--shorten-method", "truncate", "--num-classes", "2",
                "--init-token", "0", "--separator-token", "2", "--optimizer", "adam", "--lr", "1e-3",
                "--batch-size", "16", "--max-update", "5", "--cpu", "--num-workers", "0",
                "--save-dir", str(save), "--no-epoch-checkpoints", "--seed", "1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return save / "checkpoint_last.pt"


def pytest_terminal_summary(terminalreporter, config):
    """After a run of the docs-commands test: the doc blocks it did not run, each with its mark's
    reason, and the time each block it ran took."""
    ran = [r for reports in terminalreporter.stats.values() for r in reports
           if "test_docs_commands.py" in getattr(r, "nodeid", "")]
    if ran:
        from docs_blocks import TIMINGS, collect, not_run_summary, timing_summary

        lines = not_run_summary(collect(ROOT)[0])
        terminalreporter.write_sep("-", f"{len(lines)} doc blocks not run by the docs test (their marks' reasons)")
        for line in lines:
            terminalreporter.write_line(line)
        if config.stash.get(TIMINGS, None):
            terminalreporter.write_sep("-", "doc blocks run by the docs test")
            for line in timing_summary(config.stash[TIMINGS]):
                terminalreporter.write_line(line)


@pytest.fixture
def one_thread():
    """torch on one thread for the test: tiny models and many tiny tensors gain nothing from threads,
    and on a shared machine lose much to them."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
