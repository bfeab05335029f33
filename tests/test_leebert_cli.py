"""LeeBERT through fairseq-hydra-train: the three meta modes, exact resume, clo without the task.

The other bad LeeBERT inputs are rows of test_bad_input_catalogue.py.
"""
import pytest
import torch
import yaml
from fairseq.tasks.sentence_prediction import SentencePredictionConfig

from leebert_plugin.benchmark.weights import weights_record
from leebert_plugin.hub import EarlyExitClassifier
from leebert_plugin.tasks.early_exit_sentence_prediction import EarlyExitSentencePredictionConfig

from conftest import hydra_train
from helpers import BIN, LEEBERT_SHORT as SHORT, ROOT, json_records, run
from helpers import assert_one_clear_error


@pytest.mark.parametrize("mode,precision", [("clo", []), ("darts2", []), ("darts1", []), ("clo", ["common.bf16=true"])])
def test_each_meta_mode_trains_end_to_end(mode, precision, mr_bin, tmp_path):
    """Also under --bf16 (the meta step on an fp32 replica of the bf16 model)."""
    proc = hydra_train("mr_leebert", f"task.data={mr_bin}", f"checkpoint.save_dir={tmp_path}",
                       f"optimizer.mode={mode}", *SHORT, *precision)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json_records(proc.stdout, "train_inner")
    assert len(records) == 6 and all("hypergrad_norm" in r for r in records)
    state = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu")
    bilevel = state["task_state"]["bilevel"]  # the task's, beside the model and fairseq's optimizer
    logits = bilevel["weights"]["logits"]
    assert logits.numel() == 4 + 12 and float(logits.abs().max()) > 0  # the weights moved
    assert bilevel["optimizer"]["state"] and not any(k.startswith("loss_weights") for k in state["model"])
    # the trajectory (a meta step every update) and the distance from uniform, in the log and the record
    assert all("wkl_kd" in r and "wratio_ce" in r for r in records)
    assert float(records[-1]["wratio_kd"]) > 1.0
    record = weights_record(tmp_path / "checkpoint_last.pt")
    # update 0 runs at lr 0 (fairseq's warm-up starts there): no virtual step, the weights stay
    assert record["updates"] == list(range(1, 6)) and record["w_lr"] == 0.05 and record["planned_updates"] == 6
    assert list(record["final"].values()) == pytest.approx(record["weights"][-1])
    assert record["spread"]["kd"]["max_min_ratio"] > 1.0
    clf = EarlyExitClassifier.from_pretrained(str(tmp_path / "checkpoint_last.pt"), data=str(mr_bin), bpe="none",
                                              device="cpu")
    assert clf.loss_weights == pytest.approx(record["final"])  # what the hub reads


def test_the_default_weights_lr_comes_from_the_runs_length(mr_bin, tmp_path):
    """Without optimizer.w_lr, under max_epoch alone: one epoch of the 400 bundled examples in
    batches of 16 is 25 updates, 5 meta steps at an interval of 5, so the lr is w_travel / 5."""
    short = [ov for ov in SHORT if not ov.startswith(("optimizer.w_lr", "optimizer.w_update_interval",
                                                      "optimization.max_update"))]
    proc = hydra_train("mr_leebert", f"task.data={mr_bin}", f"checkpoint.save_dir={tmp_path}", *short,
                       "optimization.max_update=0", "optimizer.w_update_interval=5",
                       "+lr_scheduler.total_num_update=25")  # the schedule's own length, which it needs
    assert proc.returncode == 0, proc.stderr[-3000:]
    bilevel = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu")["task_state"]["bilevel"]
    assert bilevel["planned_updates"] == 25 and bilevel["w_lr"] == pytest.approx(3.0 / 5)
    assert bilevel["trajectory"]["updates"] == [5, 10, 15, 20]  # update 0: lr 0 in the warm-up, no meta step


def test_resume_mid_epoch_continues_exactly(mr_bin, tmp_path):
    common = [f"task.data={mr_bin}", "optimization.max_epoch=1", "optimization.max_update=8",
              "lr_scheduler.warmup_updates=2", "dataset.batch_size=16", "optimizer.w_update_interval=2",
              "optimizer.w_lr=0.05", "common.log_interval=1", "checkpoint.save_interval_updates=4"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    a = hydra_train("mr_leebert", f"checkpoint.save_dir={straight}", *common)
    assert a.returncode == 0, a.stderr[-3000:]
    b = hydra_train("mr_leebert", f"checkpoint.save_dir={resumed}", *common,
                    f"checkpoint.restore_file={straight / 'checkpoint_1_4.pt'}")
    assert b.returncode == 0, b.stderr[-3000:]
    logged_a = {r["num_updates"]: r for r in json_records(a.stdout, "train_inner")}
    logged_b = {r["num_updates"]: r for r in json_records(b.stdout, "train_inner")}
    assert sorted(logged_b) == ["5", "6", "7", "8"]
    for update in ("5", "6", "7", "8"):
        for key, value in logged_b[update].items():
            if key.startswith(("loss", "ce_", "kd_", "w_", "hypergrad")):
                assert logged_a[update][key] == value, (update, key)
    sa = torch.load(straight / "checkpoint_last.pt", map_location="cpu")
    sb = torch.load(resumed / "checkpoint_last.pt", map_location="cpu")
    for key, value in sa["model"].items():
        if torch.is_tensor(value):
            torch.testing.assert_close(sb["model"][key], value, rtol=1e-6, atol=1e-7, msg=key)
    wa, wb = sa["task_state"]["bilevel"], sb["task_state"]["bilevel"]
    torch.testing.assert_close(wb["weights"]["logits"], wa["weights"]["logits"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(wb["optimizer"]["state"][0]["exp_avg"], wa["optimizer"]["state"][0]["exp_avg"])


def test_fixed_weights_on_a_leebert_config_need_only_learn_weights_false(mr_bin, tmp_path):
    """LeeBERT's terms at fixed weights from its own config, clo left in place: the run trains as
    under exit_adam (no meta step, no D1/D2 split, no learned weights saved) and says so."""
    proc = hydra_train("mr_leebert", f"task.data={mr_bin}", f"checkpoint.save_dir={tmp_path}", *SHORT,
                       "criterion.learn_weights=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (proc.stdout + proc.stderr).count("the loss-term weights stay at their start, no meta step") == 1
    train = json_records(proc.stdout, "train_inner")
    assert len(train) == 6 and all("hypergrad_norm" not in r and "w_ce_L1" not in r for r in train)
    assert all("kd_L1<L4" in r for r in train)  # LeeBERT's terms, at their fixed weights
    assert weights_record(tmp_path / "checkpoint_last.pt") is None


def test_pabee_under_clo_trains_as_under_exit_adam(mr_bin, tmp_path):
    """multi_exit learns no weights: clo has nothing to learn and says so, the run trains."""
    proc = hydra_train("mr_multi_exit", f"task.data={mr_bin}", f"checkpoint.save_dir={tmp_path}", "optimizer._name=clo",
                       "optimization.max_update=3", "dataset.disable_validation=true", "common.log_interval=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "criterion multi_exit with learn_weights=false under the clo optimizer" in proc.stdout + proc.stderr
    assert len(json_records(proc.stdout, "train_inner")) == 3
    assert weights_record(tmp_path / "checkpoint_last.pt") is None


def test_clo_without_the_early_exit_task(mr_bin, tmp_path):
    """fairseq's own sentence_prediction task would never train the learned weights: refuse."""
    cfg = yaml.safe_load((ROOT / "configs" / "mr_leebert.yaml").read_text())
    ours = set(EarlyExitSentencePredictionConfig.__dataclass_fields__) - set(SentencePredictionConfig.__dataclass_fields__)
    cfg["task"] = {k: v for k, v in cfg["task"].items() if k not in ours}
    cfg["task"]["_name"] = "sentence_prediction"
    cfg["criterion"].update(classification_head_name="sentence_classification_head", regression_target=False)
    (tmp_path / "plain_task_leebert.yaml").write_text("# @package _group_\n" + yaml.safe_dump(cfg))
    save = tmp_path / "save"
    proc = run([str(BIN / "fairseq-hydra-train"), "--config-dir", str(tmp_path), "--config-name",
                "plain_task_leebert", f"task.data={mr_bin}", f"checkpoint.save_dir={save}", *SHORT])
    assert_one_clear_error(proc, "needs the early_exit_sentence_prediction task")
    assert not list(save.glob("*.pt"))


def test_a_user_criterion_gets_logging_policies_and_learned_weights(mr_bin, tmp_path):
    """examples/hidden_mse adds one term; under clo its weight moves, with no other code."""
    proc = hydra_train("mr_hidden_mse", f"task.data={mr_bin}", f"checkpoint.save_dir={tmp_path}", *SHORT,
                       "task.exit_policy=patience", "task.exit_patience=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = json_records(proc.stdout, "train_inner")
    first, last = float(train[0]["w_hid_mse"]), float(train[-1]["w_hid_mse"])
    assert first == pytest.approx(0.4, abs=0.01)  # global softmax over 5 terms, times 2 groups
    assert abs(last - first) > 1e-3
    assert "hid_mse" in train[-1]
    (valid,) = json_records(proc.stdout, "valid")
    assert "valid_speedup" in valid and float(valid["valid_exit_L1"]) == 0.0  # patience policy ran
