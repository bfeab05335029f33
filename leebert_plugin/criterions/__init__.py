from leebert_plugin.criterions import leebert, multi_exit, smartbert  # noqa: F401
