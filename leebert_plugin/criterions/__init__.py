from leebert_plugin.criterions import multi_exit  # noqa: F401
