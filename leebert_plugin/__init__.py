"""leebert_plugin: early-exit sentence classifiers (LeeBERT, SmartBERT, PABEE, DeeBERT) for fairseq.

Importing the package registers every model, criterion and task with fairseq. fairseq's
``--user-dir`` auto-imports only ``models/`` and ``tasks/``, so the user dir imports this package.
"""
import argparse

import torch
from fairseq.distributed.utils import _TensorPlaceholder

# Checkpoints written by the argparse CLI (fairseq-train) store an argparse.Namespace, and fairseq's
# broadcast_object (rank 0 sends a state to the others) pickles a _TensorPlaceholder (an int) per
# tensor; torch >= 2.6 loads weights-only by default. Allow exactly these classes, nothing else.
if hasattr(torch.serialization, "add_safe_globals"):
    torch.serialization.add_safe_globals([argparse.Namespace, _TensorPlaceholder])

from leebert_plugin import bpe, criterions, models, optim, tasks  # noqa: E402,F401
from leebert_plugin import checkpoint_files, cpu_gather, ddp, safe_loading, save_dir_lock, task_state  # noqa: E402
from leebert_plugin.optim import precision  # noqa: E402
from leebert_plugin.errors import UsageError  # noqa: E402,F401
from leebert_plugin import cli  # noqa: E402

# fairseq-validate --path, resume and the hub load through fairseq's loader: one clear line for
# an untrusted or damaged checkpoint instead of torch's traceback
safe_loading.install()
# checkpoint files are whole or absent: fairseq's saves and its last/best copies are atomic and synced
checkpoint_files.install()
# one run per save dir: a lock the job's rank 0 holds (pid, host; a dead holder's lock is taken over)
save_dir_lock.install()
# multi-process CPU runs: fairseq's gather of non-summable logging outputs needs CUDA
cpu_gather.install()
# fairseq's default DDP backend (pytorch_ddp) on CPU: fairseq passes device_ids=[0] for a CPU module
ddp.install()
# resuming restores the task's state (LeeBERT's learned loss weights), which fairseq's trainer drops
task_state.install()
# --bf16 / --fp16 without flat grads: fairseq's fp32 master copies carry the exit heads' tag (exit_lr_scale)
precision.install()
# settings fairseq acts on before the task is set up (asynchronous checkpoint writes): refused first
cli.install()
# fairseq-validate / fairseq-train: an uncaught UsageError ends the command in its one line
if cli.under_fairseq_command():
    cli.install_excepthook()
