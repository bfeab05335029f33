from leebert_plugin.models import exit_roberta  # noqa: F401  (registers the model and its archs)
