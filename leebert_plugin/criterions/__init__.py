from leebert_plugin.criterions import leebert, multi_exit  # noqa: F401
