"""Restoring a plain RoBERTa checkpoint (the bad-input cases are in test_bad_input_catalogue.py)."""
import torch

from conftest import hydra_train


def test_restoring_plain_roberta_loads_the_encoder_and_injects_fresh_exits(plain_roberta, mr_bin, tmp_path):
    save = tmp_path / "exit"
    proc = hydra_train("mr_multi_exit", f"task.data={mr_bin}", f"checkpoint.save_dir={save}",
                       f"checkpoint.restore_file={plain_roberta}", "checkpoint.reset_optimizer=true",
                       "checkpoint.reset_dataloader=true", "checkpoint.reset_meters=true",
                       "checkpoint.reset_lr_scheduler=true", "optimization.lr=[0.0]",
                       "optimization.max_update=1", "lr_scheduler.warmup_updates=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint has no exit_heads: initialising them fresh" in proc.stdout
    plain = torch.load(plain_roberta, map_location="cpu")["model"]  # Namespace allow-listed by the plugin
    restored = torch.load(save / "checkpoint_last.pt", map_location="cpu")["model"]
    encoder_keys = [k for k in plain if k.startswith("encoder.")]
    assert len(encoder_keys) > 20
    for k in encoder_keys:  # lr 0: one update leaves the restored weights as they were
        assert torch.equal(plain[k], restored[k]), k
    assert any(k.startswith("exit_heads.") for k in restored)
    assert not any(k.startswith("classification_heads.") for k in restored)
