"""Encode text files with any registered fairseq bpe (gpt2, wordpiece, sentencepiece, ...), in parallel.

    python -m leebert_plugin.data.bpe_encode --bpe wordpiece --wordpiece-vocab vocab.txt \\
        --inputs train.raw.input0 dev.raw.input0 --outputs train.input0 dev.input0 --workers 4

Line ``i`` of an output is the bpe encoding of line ``i`` of its input (an empty line stays an empty
line, so the inputs and labels of a data set stay aligned). The bpe's options are its fairseq
options (``--sentencepiece-model``, ``--gpt2-encoder-json``/``--gpt2-vocab-bpe``, ...). Text is
encoded by :func:`encode_text`, the one function the Python API (``hub.py``) uses too.
"""
import argparse
import dataclasses
import multiprocessing
import typing
from argparse import Namespace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from fairseq.data import encoders
from fairseq.registry import REGISTRIES

import leebert_plugin  # noqa: F401  (registers the plugin's bpes)
from leebert_plugin import cli
from leebert_plugin.errors import UsageError

# bpe options naming a file: checked up front (fairseq would try to download URLs, or fail deep inside)
FILE_OPTIONS = ("wordpiece_vocab", "sentencepiece_model", "gpt2_encoder_json", "gpt2_vocab_bpe")
CHUNK = 512  # lines a worker encodes per task


NO_BPE = "none"  # a model served without a bpe: its sentences come already encoded (pieces joined by spaces)


def bpe_names() -> List[str]:
    return sorted(REGISTRIES["bpe"]["registry"])


def option_names(name: str) -> List[str]:
    """Bpe ``name``'s own options (its fairseq dataclass fields)."""
    config = REGISTRIES["bpe"]["dataclass_registry"].get(name)
    return [f.name for f in dataclasses.fields(config) if not f.name.startswith("_")] if config else []


def check_choice(name: Optional[str], options: Dict[str, object]) -> None:
    """A bpe named from Python (``bpe=``, with its options as keywords): an unknown name or an
    option the bpe does not have is one line, not fairseq's ``KeyError`` or a silently ignored
    keyword (a misspelt ``vocab=`` would leave the real option unset)."""
    if name in (None, NO_BPE):
        if options:
            raise UsageError(f"bpe options {', '.join(sorted(options))} given without a bpe",
                             "name the bpe they belong to (bpe='wordpiece', ...)")
        return
    if name not in bpe_names():
        raise UsageError(f"unknown bpe {name!r}",
                         f"use one of {', '.join(bpe_names())}, or {NO_BPE!r} for sentences that come already encoded")
    unknown = sorted(set(options) - set(option_names(name)))
    if unknown:
        raise UsageError(f"{', '.join(unknown)}: not an option of bpe {name!r}",
                         f"use its options: {', '.join(option_names(name))}")


def _option_type(annotation) -> type:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]  # Optional[X] -> X
    kind = args[0] if args else annotation
    if kind is bool:
        return lambda v: {"true": True, "false": False}[v.lower()]  # explicit values: fairseq's flags invert
    return kind


def add_bpe_args(parser: argparse.ArgumentParser, name: str) -> None:
    """Add bpe ``name``'s options (its fairseq dataclass fields) as ``--dashed-names``."""
    config = REGISTRIES["bpe"]["dataclass_registry"].get(name)
    group = parser.add_argument_group(f"{name} options")
    for f in dataclasses.fields(config) if config else ():
        if f.name.startswith("_"):
            continue
        required = f.default == "???" or f.name in FILE_OPTIONS
        metavar = "FILE" if f.name in FILE_OPTIONS else "{true,false}" if f.type is bool else None
        group.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=_option_type(f.type),
                           required=required, default=None if required else f.default,
                           help=f.metadata.get("help", ""), metavar=metavar)


def bpe_options(args: Namespace, name: str) -> Dict[str, object]:
    """The values in ``args`` of bpe ``name``'s own options (its fairseq dataclass fields), set ones only."""
    return {f: getattr(args, f) for f in option_names(name) if getattr(args, f, None) is not None}


def parse_with_bpe(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None,
                   choices: Optional[Sequence[str]] = None) -> Namespace:
    """Parse ``argv`` with a ``--bpe NAME`` option (one of ``choices``, default: every registered bpe),
    then with that bpe's own options added."""
    allowed = list(choices or bpe_names())
    parser.add_argument("--bpe", required=True, choices=allowed,
                        help="fairseq bpe to encode with; --bpe NAME --help lists its options")
    first = cli.ArgumentParser(add_help=False)  # only --bpe, so that --help can list the bpe's options
    first.add_argument("--bpe")
    name = first.parse_known_args(argv)[0].bpe
    if name in allowed:
        add_bpe_args(parser, name)
    return parser.parse_args(argv)


def parse_with_optional_bpe(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None,
                            default_help: str = "the one DATA/prepare.json records") -> Tuple[Namespace, Dict[str, object]]:
    """Parse ``argv`` with an optional ``--bpe NAME`` (a registered bpe, or ``none`` for sentences
    that come already encoded) and, when one is named, its own options; the parsed arguments and
    the bpe's options that were set (what :func:`check_choice` and ``export.bpe_of`` take)."""
    parser.add_argument("--bpe", choices=[*bpe_names(), NO_BPE],
                        help=f"the bpe (default: {default_help}; {NO_BPE}: sentences come already encoded); "
                             "--bpe NAME --help lists its options")
    first = cli.ArgumentParser(add_help=False)
    first.add_argument("--bpe")
    name = first.parse_known_args(argv)[0].bpe
    if name in bpe_names():
        add_bpe_args(parser, name)
    args = parser.parse_args(argv)
    return args, bpe_options(args, name) if name in bpe_names() else {}


def build(args: Namespace):
    """The bpe ``args.bpe`` with its options from ``args``; missing files are one clear error."""
    for option in FILE_OPTIONS:
        value = getattr(args, option, None)
        if value is not None and not Path(value).is_file():
            raise UsageError(f"--{option.replace('_', '-')} {value} is not a file",
                             "pass the local file the bpe needs (see README, GLUE preprocessing)")
    return encoders.build_bpe(args)


def encode_text(bpe, text: str) -> str:
    """One sentence -> space-separated bpe symbols (surrounding whitespace dropped, as fairseq's encoder)."""
    return " ".join(bpe.encode(text.strip()).split())


_WORKER_BPE = None


def _start_worker(args: Namespace) -> None:
    global _WORKER_BPE
    _WORKER_BPE = build(args)


def _encode_in_worker(line: str) -> str:
    return encode_text(_WORKER_BPE, line)


def encode_lines(args: Namespace, lines: Sequence[str], workers: int = 1) -> List[str]:
    """Encode ``lines`` with the bpe of ``args``, in ``workers`` processes (in this one if 1)."""
    bpe = build(args)  # fail here, once, on bad options
    if workers <= 1 or len(lines) <= CHUNK:
        return [encode_text(bpe, line) for line in lines]
    with multiprocessing.Pool(workers, initializer=_start_worker, initargs=(args,)) as pool:
        return list(pool.imap(_encode_in_worker, lines, CHUNK))


def read_lines(path: Path) -> List[str]:
    """Lines split on ``\\n`` only (a stray ``\\r`` inside a sentence is not a line break)."""
    text = Path(path).read_text(encoding="utf-8")
    return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n") if text else []


def write_lines(path: Path, lines: Sequence[str]) -> None:
    Path(path).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def encode_files(args: Namespace, inputs: Sequence[Path], outputs: Sequence[Path], workers: int = 1) -> None:
    if len(inputs) != len(outputs):
        raise UsageError(f"{len(inputs)} inputs but {len(outputs)} outputs", "pass one output per input")
    for src, dst in zip(inputs, outputs):
        if not Path(src).is_file():
            raise UsageError(f"{src} does not exist", "pass existing text files to --inputs")
        write_lines(dst, encode_lines(args, read_lines(src), workers))


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", nargs="+", type=Path, required=True, help="text files, one sentence a line")
    p.add_argument("--outputs", nargs="+", type=Path, required=True, help="one output per input")
    p.add_argument("--workers", type=int, default=1, help="encoding processes")
    args = parse_with_bpe(p, argv)
    encode_files(args, args.inputs, args.outputs, args.workers)


if __name__ == "__main__":
    cli.run(main)
