"""The own-data path to the end, as a new user walks it (issue 34): a quoted-text TSV of tweets ->
prepare_data -> the training command it prints (fine-tuning a converted BERT through
``checkpoint.restore_file``) -> export -> ``from_pretrained(folder)`` -> predict with label names.

The BERT is a random 2-layer one (exit_bert_tiny's shape) written here as a Hugging Face folder,
and the printed command runs with a few updates on the CPU: what is checked is that every step
takes the previous one's output, not accuracy.
"""
import random
import re
import shlex
import sys

from helpers import BIN, ROOT, run, tiny_hf_bert
from leebert_plugin.hub import EarlyExitClassifier
from leebert_plugin.models.hf_bert_import import convert

WORDS = {"positive": ["love", "great", "best"], "negative": ["hate", "awful", "worst"]}
VOCAB = ["i", "this", "phone", "day", "ever", "the", "-", "tanya", "h", ".", "!", "\"", *sum(WORDS.values(), [])]
SHORT = {"optimization.max_update": "4", "lr_scheduler.warmup_updates": "1"}  # the printed values, replaced
EXTRA = ["common.cpu=true", "dataset.num_workers=0", "dataset.batch_size=8", "optimization.max_epoch=1",
         "common.log_interval=1"]


def tweet(rng: random.Random, label: str) -> str:
    text = f"i {rng.choice(WORDS[label])} this {rng.choice(['phone', 'day'])}"
    return f'"{text}..." -Tanya H.' if rng.random() < 0.5 else text + rng.choice(["!", " ever", ""])


def printed_command(stdout: str):
    """The fairseq-hydra-train command prepare_data printed, as argv, shortened to a few CPU updates."""
    text = stdout.split("train with (from the repository root, .venv/bin on PATH):", 1)[1]
    argv = shlex.split(text.replace("\\\n", " "))
    assert argv[0] == "fairseq-hydra-train", argv
    for i, arg in enumerate(argv):
        key = arg.split("=", 1)[0]
        if key in SHORT:
            argv[i] = f"{key}={SHORT[key]}"
    return [str(BIN / "fairseq-hydra-train"), *argv[1:], *EXTRA]


def test_tweets_to_label_names_through_the_printed_command_and_an_export(tmp_path):
    hf = tiny_hf_bert(tmp_path / "hf-bert", VOCAB)
    convert(hf, tmp_path / "bert")
    rng = random.Random(3)
    labels = [rng.choice(sorted(WORDS)) for _ in range(80)]
    tsv = "text\tlabel\n" + "".join(f"{tweet(rng, y)}\t{y}\n" for y in labels)
    assert '\n"i ' in tsv  # texts that open with a quote, as tweets do
    (tmp_path / "tweets.tsv").write_text(tsv, encoding="utf-8")
    data = tmp_path / "tweets-bin"
    proc = run([sys.executable, "-m", "leebert_plugin.prepare_data", "--train", str(tmp_path / "tweets.tsv"),
                "--out", str(data), "--bpe", "wordpiece", "--wordpiece-vocab", str(tmp_path / "bert" / "vocab.txt"),
                "--dict", str(tmp_path / "bert" / "dict.txt")], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "quotes as text" in proc.stdout
    train = printed_command(proc.stdout)
    assert f"checkpoint.restore_file={(tmp_path / 'bert' / 'model.pt').resolve()}" in train  # fine-tunes the BERT
    proc = run(train, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    save = re.search(r"checkpoint\.save_dir=(\S+)", " ".join(train)).group(1)
    out = tmp_path / "served"
    proc = run([sys.executable, "-m", "leebert_plugin.export", f"{save}/checkpoint_best.pt", str(data), str(out)], cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    clf = EarlyExitClassifier.from_pretrained(str(out), device="cpu")
    assert clf.labels == ["negative", "positive"]
    preds = clf.predict(['"I love this phone..." -Tanya H.', "i hate this day"], exit_policy="entropy", threshold=0.3)
    assert len(preds) == 2 and all(p.label in ("negative", "positive") for p in preds)
    assert all(abs(sum(p.probs) - 1) < 1e-5 and 1 <= p.exit_layer <= 2 for p in preds)
