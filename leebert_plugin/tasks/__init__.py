from leebert_plugin.tasks import early_exit_sentence_prediction  # noqa: F401
