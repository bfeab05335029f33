"""fairseq-preprocess ``--only-source``, run in this process: one call per input column or label."""
import logging
from pathlib import Path
from typing import Dict, Optional, Sequence

from fairseq import options
from fairseq_cli import preprocess


def fairseq_preprocess(destdir: Path, prefs: Dict[str, Sequence[Path]], srcdict: Optional[Path] = None,
                       workers: int = 1) -> None:
    """Binarise text files into ``destdir`` exactly as ``fairseq-preprocess --only-source`` does.

    ``prefs``: fairseq split kind (``train``, ``valid``, ``test``) -> the files of that kind, in order
    (``valid``, ``valid1``, ...). ``srcdict``: the dictionary to use; None builds one by frequency from
    the training file. fairseq's log goes to ``destdir/preprocess.log`` only.
    """
    argv = ["--only-source", "--destdir", str(destdir), "--workers", str(workers)]
    argv += [f"--{kind}pref={','.join(str(p) for p in paths)}" for kind, paths in prefs.items() if paths]
    if srcdict is not None:
        argv += ["--srcdict", str(srcdict)]
    args = options.get_preprocessing_parser().parse_args(argv)
    log = logging.getLogger("fairseq_cli.preprocess")
    handlers, propagate = list(log.handlers), log.propagate
    log.propagate = False  # fairseq adds a file handler for destdir/preprocess.log; keep stdout quiet
    try:
        preprocess.main(args)
    finally:
        for handler in [h for h in log.handlers if h not in handlers]:
            log.removeHandler(handler)
            handler.close()
        log.propagate = propagate
