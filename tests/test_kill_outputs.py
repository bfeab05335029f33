"""kill -9 at random moments of ``export --overwrite`` and ``prepare_data --overwrite``, ten each:
the output folder always holds the old result whole or the new one whole, and it loads; the next
run leaves no hidden staging folder, backup or lock beside it.

Each run is a process forked from a server that imported the plugin once (multiprocessing's
forkserver, so a run takes a fraction of a second instead of an interpreter start), killed with
SIGKILL after a random delay drawn over the length of a whole run (measured first).
"""
import hashlib
import multiprocessing
import os
import random
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from leebert_plugin.export import is_export, main as export_main, read_export
from leebert_plugin.prepare_data import main as prepare_data
from leebert_plugin.runtime.outputs import loadable
from test_prepare_data import argv as prepare_argv, write_reviews, VOCAB

KILLS = 10


def _digest(folder: Path) -> dict:
    """Every file's SHA-256 but fairseq-preprocess's log (it names the staging folder it wrote)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "preprocess.log"}


def _context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["leebert_plugin.export", "leebert_plugin.prepare_data", "test_kill_outputs"])
    return ctx


def _run(ctx, main, args, delay=None) -> bool:
    """``main(args)`` in a forked process, killed with SIGKILL after ``delay`` seconds (None: let it
    finish). True when it was killed before it finished."""
    proc = ctx.Process(target=main, args=(args,))
    proc.start()
    proc.join(delay)
    if proc.is_alive():
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        return True
    assert proc.exitcode == 0, proc.exitcode
    return False


def _kill_at_random(ctx, main, args, out: Path, old: dict, new: dict, loads) -> None:
    old_copy = out.parent.parent / "old-copy"
    shutil.copytree(out, old_copy)
    _run(ctx, main, args)  # a whole run (the first starts the server: not timed)
    start = time.perf_counter()
    _run(ctx, main, args)  # a whole run, timed: the kills are drawn over its length
    length = time.perf_counter() - start
    rng = random.Random(34)
    killed = 0
    for _ in range(KILLS):
        shutil.rmtree(out)
        shutil.copytree(old_copy, out)  # the old output again
        killed += _run(ctx, main, args, rng.uniform(0, 1.2 * length))
        found = _digest(loadable(out))
        assert found in (old, new), sorted(p.name for p in out.parent.iterdir())
        print("kill: found the", "old" if found == old else "new", "output")
        loads(out)
    assert killed >= KILLS // 2, f"only {killed} of {KILLS} runs were killed before they finished"
    _run(ctx, main, args)  # the next run, to the end
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # nothing hidden left beside it
    assert _digest(out) == new


def _export(args):
    export_main(args)


def _prepare(args):
    prepare_data(args)


@pytest.fixture(scope="module")
def ctx():
    return _context()


def test_kill_9_during_export_overwrite_leaves_a_loadable_export(ctx, trained, mr_bin, tmp_path):
    out = tmp_path / "exports" / "model"
    checkpoint = str(trained / "checkpoint_best.pt")
    export_main([checkpoint, str(mr_bin), str(out), "--bpe", "none"])  # the old export: no bpe shipped
    old = _digest(out)
    new_args = [checkpoint, str(mr_bin), str(out), "--overwrite", "--bpe", "sentencepiece", "--sentencepiece-model",
                str(mr_bin / "raw" / "spm.model")]

    def loads(folder):
        assert is_export(folder)
        torch.load(loadable(folder) / "model.pt", map_location="cpu", weights_only=True)

    reference = tmp_path / "reference" / "model"
    export_main([*new_args[:2], str(reference), *new_args[3:]])
    new = _digest(reference)
    assert new != old
    model, _, bpe = read_export(reference, "cpu")  # the new one loads whole (the old one: test_export)
    assert bpe[0] == "sentencepiece"
    _kill_at_random(ctx, _export, new_args, out, old, new, loads)


def test_kill_9_during_prepare_data_overwrite_leaves_a_loadable_layout(ctx, tmp_path):
    from fairseq.data import Dictionary, data_utils

    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    write_reviews(tmp_path / "reviews.tsv", 240)
    files = {"train": tmp_path / "reviews.tsv", "vocab": tmp_path / "vocab.txt"}
    out = tmp_path / "data" / "bin"
    prepare_data(prepare_argv(files, out, "--seed", "1"))
    old = _digest(out)
    reference = tmp_path / "reference" / "bin"
    prepare_data(prepare_argv(files, reference, "--seed", "2"))
    new = _digest(reference)
    assert new != old and old["prepare.json"] != new["prepare.json"]

    def loads(folder):
        folder = loadable(folder)
        dictionary = Dictionary.load(str(folder / "input0" / "dict.txt"))
        assert len(data_utils.load_indexed_dataset(str(folder / "input0" / "valid"), dictionary)) > 0

    _kill_at_random(ctx, _prepare, prepare_argv(files, out, "--seed", "2", "--overwrite"), out, old, new, loads)
