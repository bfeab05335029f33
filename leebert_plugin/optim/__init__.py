from leebert_plugin.optim import clo, exit_adam  # noqa: F401
