"""fairseq user dir: ``--user-dir user_dir`` (or ``common.user_dir=...``) registers the plugin."""
import importlib.util
import os
import sys

if importlib.util.find_spec("leebert_plugin") is None:  # a checkout that was not pip-installed
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import leebert_plugin  # noqa: E402,F401
