"""Real fairseq-hydra-train and fairseq-validate runs on the tiny model and real snippets."""
import pytest
import torch

from helpers import BIN, json_records, run, validate

LAYERS = 4


def test_training_logs_every_exit(trained):
    records = json_records((trained / "train.stdout").read_text(), "valid")
    assert len(records) == 5  # one validation per epoch
    last = records[-1]
    for layer in range(1, LAYERS + 1):
        assert f"valid_acc_L{layer}" in last and f"valid_ce_L{layer}" in last
    # no policy during training: everyone runs every layer, accuracy is the last exit's
    assert float(last["valid_speedup"]) == 1.0
    assert float(last["valid_exit_L4"]) == 100.0
    assert last["valid_accuracy"] == last["valid_acc_L4"]
    assert (trained / "checkpoint_best.pt").exists()


def test_saved_checkpoint_keeps_the_exit_settings(trained):
    state = torch.load(trained / "checkpoint_best.pt", map_location="cpu")  # weights-only default
    task = state["cfg"]["task"]
    assert task["exit_policy"] == "none" and task["exit_patience"] == 1 and "exit_threshold" in task
    assert any(k.startswith("exit_heads.") for k in state["model"])


def test_validate_with_a_policy_reports_speedup_and_histogram(trained, mr_bin):
    full = validate(trained, mr_bin)
    assert full["speedup"] == 1.0 and full["accuracy"] == full[f"acc_L{LAYERS}"]
    speedups = []
    for threshold in ("0.9", "0.98", "0.995"):
        early = validate(trained, mr_bin, "--exit-policy", "normalized_entropy", "--exit-threshold", threshold)
        hist = [early[f"exit_L{layer}"] for layer in range(1, LAYERS + 1)]
        assert sum(hist) == pytest.approx(100.0, abs=0.05)
        mean_layers = sum(layer * share / 100 for layer, share in zip(range(1, LAYERS + 1), hist))
        assert early["mean_layers"] == pytest.approx(mean_layers, abs=2e-3)
        assert early["speedup"] == pytest.approx(LAYERS / early["mean_layers"], abs=2e-3)
        # the full-depth accuracy of every exit does not depend on the policy
        for layer in range(1, LAYERS + 1):
            assert early[f"acc_L{layer}"] == full[f"acc_L{layer}"]
        speedups.append(early["speedup"])
    assert speedups == sorted(speedups), "a looser threshold never slows down"
    assert any(1.0 < s < LAYERS for s in speedups), f"no threshold gave mixed exits: {speedups}"


def test_a_policy_that_exits_everyone_first_scores_like_the_first_exit(trained, mr_bin):
    out = validate(trained, mr_bin, "--exit-policy", "max_prob", "--exit-threshold", "0", subset="test")
    assert out["exit_L1"] == 100.0 and out["speedup"] == float(LAYERS)
    assert out["accuracy"] == out["acc_L1"]


def test_patience_policy_through_the_cli(trained, mr_bin):
    out = validate(trained, mr_bin, "--exit-policy", "patience", "--exit-patience", "1")
    assert out["exit_L1"] == 0.0  # patience 1 needs two agreeing exits: nobody leaves at the first
    assert 1.0 <= out["speedup"] <= 2.0


def test_argparse_cli_with_user_dir_and_a_namespace_checkpoint(mr_bin, tmp_path):
    """fairseq-train --user-dir (argparse) writes a Namespace checkpoint; fairseq-validate reads it."""
    proc = run([str(BIN / "fairseq-train"), str(mr_bin), "--user-dir", "user_dir",
                "--task", "early_exit_sentence_prediction", "--criterion", "multi_exit",
                "--arch", "exit_roberta_tiny", "--exit-layers", "2,4", "--exit-head", "deebert",
                "--num-classes", "2", "--init-token", "0", "--separator-token", "2", "--max-positions", "256",
                "--shorten-method", "truncate", "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "16",
                "--max-update", "3", "--cpu", "--num-workers", "0", "--save-dir", str(tmp_path),
                "--no-epoch-checkpoints", "--seed", "1", "--log-format", "json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # without the plugin's allow-list, torch's weights-only loader would refuse this checkpoint
    probe = run([str(BIN / "python"), "-c", "import sys, torch; "
                 "print(torch.serialization.get_unsafe_globals_in_checkpoint(sys.argv[1]))",
                 str(tmp_path / "checkpoint_last.pt")])
    assert "argparse.Namespace" in probe.stdout
    out = validate(tmp_path.parent / tmp_path.name, mr_bin, "--exit-policy", "max_prob", "--exit-threshold", "0",
                   ckpt="checkpoint_last.pt")
    assert out["exit_L2"] == 100.0 and out["speedup"] == 2.0  # exits at layers 2 and 4 only
    assert "acc_L1" not in out and "acc_L2" in out
