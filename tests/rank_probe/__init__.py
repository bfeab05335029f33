"""Test-only fairseq user dir: the plugin, plus a task that records every rank's state.

``common.user_dir=tests/rank_probe task._name=early_exit_rank_probe``: before each update, every
rank (fairseq saves checkpoints on rank 0 only) writes a copy of its parameters and of the task's
learned loss-weight logits to ``SAVE_DIR/probe/rank<R>_update<N>.pt``: the state after N updates.
``LEEBERT_PROBE_NAN=R:N`` in a rank's environment makes that rank's loss NaN at update N.
"""
import argparse
import os

import torch
from fairseq import distributed_utils
from fairseq import utils as fairseq_utils
from fairseq.tasks import register_task

import leebert_plugin  # noqa: F401  (registers the plugin)
from leebert_plugin.tasks.early_exit_sentence_prediction import (
    EarlyExitSentencePredictionConfig,
    EarlyExitSentencePredictionTask,
)

# the worked example's user criterion (hidden_mse) too: a run has one user dir
fairseq_utils.import_user_module(argparse.Namespace(
    user_dir=os.path.join(os.path.dirname(__file__), "..", "..", "examples", "hidden_mse")))


@register_task("early_exit_rank_probe", dataclass=EarlyExitSentencePredictionConfig)
class RankProbeTask(EarlyExitSentencePredictionTask):
    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        if update_num != getattr(self, "_probed", -1):  # once per update, before its first micro-batch
            self._probed = update_num
            folder = os.path.join(self.cfg.save_dir, "probe")
            os.makedirs(folder, exist_ok=True)
            state = {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
            bilevel = self.bilevel_for(criterion, model)  # the learned loss weights are the task's
            if bilevel is not None:
                state["loss_weights.logits"] = bilevel.weights.logits.detach().clone()
            torch.save(state, os.path.join(folder, f"rank{distributed_utils.get_global_rank()}_update{update_num}.pt"))
        if _nan_due(update_num):  # this rank's embeddings turn NaN for one update (env LEEBERT_PROBE_NAN)
            bare = model
            while isinstance(getattr(bare, "module", None), torch.nn.Module):
                bare = bare.module
            hook = bare.encoder.sentence_encoder.embed_tokens.register_forward_hook(lambda m, i, o: o * float("nan"))
            try:
                return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)
            finally:
                hook.remove()
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)


def _nan_due(update_num: int) -> bool:
    """``LEEBERT_PROBE_NAN=RANK:UPDATE``: a NaN loss on that rank at that update (0-based)."""
    spec = os.environ.get("LEEBERT_PROBE_NAN")
    if not spec:
        return False
    rank, update = (int(v) for v in spec.split(":"))
    return rank == distributed_utils.get_global_rank() and update == update_num
