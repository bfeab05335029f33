"""Test-only fairseq user dir: the plugin, plus a task that records every rank's state.

``common.user_dir=tests/rank_probe task._name=early_exit_rank_probe``: before each update, every
rank (fairseq saves checkpoints on rank 0 only) writes its learned loss-weight logits and a copy
of its parameters to ``SAVE_DIR/probe/rank<R>_update<N>.pt``: the state after N updates.
"""
import os

import torch
from fairseq import distributed_utils
from fairseq.tasks import register_task

import leebert_plugin  # noqa: F401  (registers the plugin)
from leebert_plugin.tasks.early_exit_sentence_prediction import (
    EarlyExitSentencePredictionConfig,
    EarlyExitSentencePredictionTask,
)


@register_task("early_exit_rank_probe", dataclass=EarlyExitSentencePredictionConfig)
class RankProbeTask(EarlyExitSentencePredictionTask):
    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if update_num != getattr(self, "_probed", -1):  # once per update, before its first micro-batch
            self._probed = update_num
            folder = os.path.join(self.cfg.save_dir, "probe")
            os.makedirs(folder, exist_ok=True)
            state = {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
            torch.save(state, os.path.join(folder, f"rank{distributed_utils.get_global_rank()}_update{update_num}.pt"))
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
