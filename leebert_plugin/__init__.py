"""leebert_plugin: early-exit sentence classifiers (LeeBERT, SmartBERT, PABEE, DeeBERT) for fairseq.

Importing the package registers every model, criterion, optimizer and task with fairseq, and
installs the plugin's changes to fairseq, once: each is listed, with its reason, in
:mod:`leebert_plugin.fairseq_patches`. fairseq's ``--user-dir`` auto-imports only ``models/`` and
``tasks/``, so the user dir imports this package.

Layout: ``hub``, ``export``, ``prepare_data``, ``demo``, ``errors`` and ``cli`` are what a user
imports or runs; ``models``, ``modules``, ``criterions``, ``optim``, ``tasks`` are the methods;
``exits`` the exit policies, their evaluation and calibration; ``data`` and ``bpe`` the data
preparation; ``runtime`` devices, launching fairseq's commands and option checks; ``benchmark``
every benchmark and the GPU check.
"""
from leebert_plugin import fairseq_patches

fairseq_patches.install()

from leebert_plugin import bpe, criterions, models, optim, tasks  # noqa: E402,F401
from leebert_plugin.errors import UsageError  # noqa: E402,F401
