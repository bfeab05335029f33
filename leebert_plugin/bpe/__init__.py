"""fairseq bpes of the plugin, registered on import (``--bpe wordpiece``)."""
from leebert_plugin.bpe import wordpiece  # noqa: F401
