from leebert_plugin.optim import clo  # noqa: F401
