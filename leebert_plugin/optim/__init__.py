from leebert_plugin.optim import clo, exit_adam, two_stage_lr  # noqa: F401
