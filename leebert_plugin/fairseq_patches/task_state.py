"""Resuming restores the task's state, as fairseq's loader for evaluation already does.

fairseq's trainer saves ``task.state_dict()`` in every checkpoint (``task_state``), and
``load_model_ensemble_and_task`` (fairseq-validate, the hub) hands it back to the task; but
``Trainer.load_checkpoint``, the resume path, drops it. The plugin's task keeps LeeBERT's learned
loss weights and their optimizer there (``optim/bilevel.py``), so a resumed run must get them
back. This wraps ``Trainer.load_checkpoint``: the state the trainer reads (through
``checkpoint_utils.load_checkpoint_to_cpu``, on every rank: the configs load on all ranks) is
noted during the call, and its ``task_state`` goes to a task that has ``restore_training_state``,
with the trainer's ``reset_optimizer``; the task's ``check_resume`` sees the state first (a criterion
other than the checkpoint's is refused there in one line, before fairseq asserts on it). Other
tasks are left as fairseq leaves them.
"""
import functools

from fairseq import checkpoint_utils
from fairseq.trainer import Trainer

from leebert_plugin.fairseq_patches.wrapping import wrap_once


def restoring_task_state(load_checkpoint):
    @functools.wraps(load_checkpoint)
    def wrapped(self, filename, reset_optimizer=False, *args, **kwargs):
        restore = getattr(self.task, "restore_training_state", None)
        if restore is None:
            return load_checkpoint(self, filename, reset_optimizer, *args, **kwargs)
        seen = []
        loader = checkpoint_utils.load_checkpoint_to_cpu

        def noting(*a, **k):
            state = loader(*a, **k)
            if isinstance(state, dict) and hasattr(self.task, "check_resume"):
                self.task.check_resume(filename, state, self.get_criterion(), reset_optimizer, model_cfg=self.cfg.model)
            seen.append(state.get("task_state") if isinstance(state, dict) else None)
            return state

        checkpoint_utils.load_checkpoint_to_cpu = noting
        try:
            extra_state = load_checkpoint(self, filename, reset_optimizer, *args, **kwargs)
        finally:
            checkpoint_utils.load_checkpoint_to_cpu = loader
        if seen and seen[-1]:
            restore(seen[-1], reset_optimizer=reset_optimizer)
        return extra_state

    return wrapped


def install() -> None:
    """Wrap ``Trainer.load_checkpoint`` (once per process)."""
    wrap_once(Trainer, "load_checkpoint", restoring_task_state)
