"""fairseq's fp32 master copies (``--bf16``, ``--fp16`` without flat grads) carry the exit heads' tag.

fairseq's ``_FP16OptimizerMixin.build_fp32_params`` makes one fp32 master per model parameter and
copies ``param_group`` and ``optim_overrides`` onto it, but not other attributes; the optimizer
then steps the masters. The plugin's exit heads learn at ``exit_lr_scale`` times the encoder's
rate (:mod:`leebert_plugin.optim.exit_adam`), found by a tag on the parameter, so without this
wrap the heads would silently train at the encoder's rate under half precision. The flat master
(``--fp16`` with flat grads) is one tensor and cannot carry a tag: ``exit_adam`` refuses a scale there.
"""
from fairseq.optim.fp16_optimizer import _FP16OptimizerMixin

from leebert_plugin.fairseq_patches.wrapping import wrap_once
from leebert_plugin.optim.exit_adam import EXIT_PARAM


def _carrying_exit_tag(build_fp32_params):
    """fairseq's ``build_fp32_params`` (a classmethod, called on the class), whose per-parameter
    masters also carry the exit tag."""
    def build(args, params, flatten=True):
        masters = build_fp32_params(args, params, flatten=flatten)
        if not flatten:
            for p, p32 in zip(params, masters):
                if getattr(p, EXIT_PARAM, False):
                    setattr(p32, EXIT_PARAM, True)
        return masters

    return build


def install() -> None:
    """fairseq's per-parameter fp32 masters carry the exit heads' tag (``exit_lr_scale``)."""
    wrap_once(_FP16OptimizerMixin, "build_fp32_params", _carrying_exit_tag)
