"""Everything the plugin changes in fairseq, in one place.

Importing ``leebert_plugin`` calls :func:`install` once; each change is a wrap of one fairseq
function (or class attribute), made by :func:`~leebert_plugin.fairseq_patches.wrapping.wrap_once`,
so a second import changes nothing. Nothing else in the plugin replaces fairseq code.

============================================================  ===========================================  ==================================================
fairseq function wrapped (module here)                        what changes                                 why (the fairseq behaviour or limitation)
============================================================  ===========================================  ==================================================
``checkpoint_utils.load_checkpoint_to_cpu`` (safe_loading)    a checkpoint is inspected before unpickling  torch's weights-only refusal of an untrusted or
                                                              and refused in one line                      damaged file is a long traceback
``checkpoint_utils.load_model_ensemble_and_task``             a missing ``--path`` is one line             fairseq raises a bare ``IOError`` traceback
(safe_loading)
``torch.serialization`` safe globals (safe_loading)           ``argparse.Namespace`` and fairseq's         torch >= 2.6 loads weights-only; fairseq-train's
                                                              ``_TensorPlaceholder`` allowed, nothing else checkpoints and ``broadcast_object`` pickle them
``checkpoint_utils.torch_persistent_save`` and its            checkpoints are written to a temporary       fairseq writes in place and copies onto
``PathManager`` copy (checkpoint_files)                       file, synced, then renamed: whole or absent  checkpoint_last/best in place: a kill leaves a
                                                                                                           truncated file that the next resume loads
``checkpoint_utils.load_checkpoint`` (save_dir_lock)          rank 0 takes a lock on the save dir before   two runs in one save dir overwrite each other's
                                                              anything is read or written                  checkpoints without a word
``Trainer.load_checkpoint`` (task_state)                      the task's state (LeeBERT's learned loss     fairseq's trainer restores model, optimizer and
                                                              weights) is restored on resume               scheduler, and drops the task's state
``distributed.utils.all_gather_list`` (cpu_gather)            gathers on the CPU when the process has no   fairseq's gather of non-summable logging outputs
                                                              GPU (gloo)                                   allocates its buffer on CUDA
``distributed_fairseq_model.DistributedDataParallel`` (ddp)   ``device_ids`` dropped for a CPU module      fairseq passes ``device_ids=[0]`` whatever the
                                                                                                           device; torch refuses it for a CPU module
``_FP16OptimizerMixin.build_fp32_params`` (fp32_masters)      per-parameter fp32 masters carry the exit    fairseq copies only ``param_group`` and
                                                              heads' learning-rate tag                     ``optim_overrides`` onto its masters
``distributed.utils.call_main`` (command_line)                asynchronous checkpoint writes refused       fairseq acts on them before the task exists: no
                                                              before any worker starts                     copy onto checkpoint_last/best, or no training
``sys.excepthook`` under fairseq's console commands           an uncaught UsageError (and fairseq's known  the error reaches the interpreter's top level as
(command_line)                                                command-line asserts) is one line, status 1  a traceback
``argparse.ArgumentParser.error`` under                       a bad option value (``--exit-threshold x``)  argparse prints fairseq's usage text (over 100
fairseq's console commands (command_line)                     is one line, status 1                        lines) and exits with status 2
============================================================  ===========================================  ==================================================

The plugin's own checks of fairseq settings (DDP backends, precision, BMUF) are not wraps: the
task runs them when it is set up (:func:`leebert_plugin.fairseq_patches.ddp.check_backend`,
:func:`leebert_plugin.optim.precision.check_precision`).
"""
from leebert_plugin.fairseq_patches import (checkpoint_files, command_line, cpu_gather, ddp, fp32_masters,
                                            safe_loading, save_dir_lock, task_state)

_INSTALLED = False


def install() -> None:
    """Install every change listed above, once per process (a second call does nothing)."""
    global _INSTALLED
    if _INSTALLED:
        return
    safe_loading.install()
    checkpoint_files.install()
    save_dir_lock.install()
    cpu_gather.install()
    ddp.install()
    task_state.install()
    fp32_masters.install()
    command_line.install()
    if command_line.under_fairseq_command():
        command_line.install_excepthook()
        command_line.install_argparse_errors()
    _INSTALLED = True
