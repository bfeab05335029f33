"""A self-contained model folder for serving: weights, dictionaries, bpe files, label names, settings.

    python -m leebert_plugin.export CHECKPOINT DATA OUT [--bpe wordpiece --wordpiece-vocab vocab.txt]

``OUT`` holds:

- ``model.pt``: the model's tensors only (a flat ``name -> tensor`` dict), so ``torch.load(...,
  weights_only=True)`` reads it: nothing in it can run code;
- ``input0/dict.txt`` and, for classification, ``label/dict.txt``: the dictionaries, laid out as a
  data folder so that the task itself is set up from ``OUT``;
- ``bpe/``: the bpe's files (a WordPiece ``vocab.txt``, a sentencepiece model, GPT-2's two files);
- ``export.json``: the model's and the task's settings, the label names, whether the model reads
  sentence pairs, the bpe and its options (file options relative to ``OUT``), and the SHA-256 of
  the checkpoint it came from. Settings only training reads (the save dir, the restore file) are
  written as fairseq's defaults: the folder loads as a saved model, not as a training run.

A folder with a missing, damaged or mismatched file is refused in one line naming the file
(:func:`read_manifest`, :func:`read_export`).

No data folder and no path of the machine that exported it is needed to load it:
``EarlyExitClassifier.from_pretrained(OUT)``. The bpe defaults to the one ``prepare_data`` recorded
in ``DATA/prepare.json``; ``--bpe`` with its options overrides it (data preprocessed otherwise;
``--bpe none`` for a model whose sentences come already encoded). Without either, export refuses.
"""
import argparse
import hashlib
import json
import os
import shutil
from argparse import Namespace
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import torch
from omegaconf import OmegaConf

from leebert_plugin import cli
from leebert_plugin.data.bpe_encode import FILE_OPTIONS, NO_BPE, check_choice, parse_with_optional_bpe
from leebert_plugin.errors import UsageError
from leebert_plugin.runtime import outputs

MANIFEST = "export.json"
FORMAT = 1


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def bpe_of(data: Path, bpe: Optional[str], options: Dict[str, object]) -> Optional[Tuple[str, Dict[str, str]]]:
    """The bpe a model's sentences go through, with its options: the one given (``none``: None, the
    sentences come already encoded), else the one ``DATA/prepare.json`` records. Neither is refused:
    raw text read without its bpe would become mostly ``<unk>`` and still get a label."""
    if bpe == NO_BPE:
        return None
    if bpe:
        return bpe, dict(options)
    settings = Path(data) / "prepare.json"
    if settings.is_file():
        recorded = json.loads(settings.read_text(encoding="utf-8"))
        return recorded["bpe"], recorded.get("bpe_options", {})
    raise UsageError(f"no bpe was given and {data} records none (it has no prepare.json)",
                     "name the bpe the data was encoded with and its files (--bpe wordpiece --wordpiece-vocab FILE; "
                     f"in Python bpe='wordpiece', wordpiece_vocab=FILE), or {NO_BPE} if the sentences come already encoded")


def export(checkpoint: Path, data: Path, out: Path, bpe: Optional[str] = None,
           bpe_options: Optional[Dict[str, object]] = None, overwrite: bool = False) -> Path:
    """Write the folder: staged beside ``out`` and swapped in whole under ``out``'s lock
    (:func:`~leebert_plugin.runtime.outputs.replacing`: a kill leaves the old export or the new one).
    ``bpe`` and ``bpe_options``: as :func:`bpe_of` takes them (None: the one ``DATA/prepare.json``
    records)."""
    out = Path(out)
    check_choice(bpe, bpe_options or {})
    _check_out(out, overwrite)
    bpe = bpe_of(data, bpe, bpe_options or {})
    for option, value in (bpe[1] if bpe else {}).items():
        if option in FILE_OPTIONS and not Path(value).is_file():
            raise UsageError(f"the bpe file {value} ({option}) does not exist", "pass the bpe's files with --bpe and its options")
    with outputs.replacing(out) as stage:  # the lock first: a second export into OUT is refused at once
        _check_out(out, overwrite)  # again, under the lock: another run may have written OUT meanwhile
        _write(stage, Path(checkpoint), Path(data), bpe)
    return out


def _write(stage: Path, checkpoint: Path, data: Path, bpe: Optional[Tuple[str, Dict[str, str]]]) -> None:
    from fairseq import checkpoint_utils

    from leebert_plugin.exits.evaluate import load

    model, task = load(checkpoint, data, "cpu")
    state = checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint))
    model_cfg = state["cfg"]["model"]  # a Namespace when trained through fairseq-train's argparse
    namespace = isinstance(model_cfg, Namespace)
    model_cfg = _plain(vars(model_cfg)) if namespace else OmegaConf.to_container(model_cfg, resolve=True, enum_to_str=True)
    model_cfg = _without_paths(model_cfg)
    task_cfg = {k: v for k, v in OmegaConf.to_container(task.cfg, resolve=True, enum_to_str=True).items()
                if not isinstance(v, dict)}  # the task's own settings, not the optimizer's or dataset's it reads
    task_cfg = _serving_task_settings(task_cfg)
    regression = bool(task.cfg.regression_target)
    labels = [] if regression else [task.label_dictionary[i] for i in range(task.label_dictionary.nspecial,
                                                                               len(task.label_dictionary))]
    outputs.torch_save({k: v.detach().clone() for k, v in model.state_dict().items()}, stage / "model.pt")
    (stage / "input0").mkdir()
    task.source_dictionary.save(str(stage / "input0" / "dict.txt"))
    if not regression:
        (stage / "label").mkdir()
        task.label_dictionary.save(str(stage / "label" / "dict.txt"))
    shipped = None
    if bpe is not None:
        name, options = bpe
        (stage / "bpe").mkdir()
        shipped = {"name": name, "options": {}}
        for option, value in options.items():
            if option in FILE_OPTIONS:
                shutil.copy(value, stage / "bpe" / Path(value).name)
                value = f"bpe/{Path(value).name}"
            shipped["options"][option] = value
    manifest = {"format": FORMAT, "model": model_cfg, "model_is_namespace": namespace, "task": task_cfg, "labels": labels,
                "regression": regression, "bpe": shipped, "checkpoint_sha256": _sha256(checkpoint)}
    manifest["pairs"] = (Path(data) / "input1").is_dir()  # sentence pairs or single sentences: the hub refuses the other
    (stage / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def _check_out(out: Path, overwrite: bool) -> None:
    """Before any work: ``out`` must be a new or empty folder; ``overwrite`` replaces only an earlier
    export (a folder with its manifest), never another folder a mistyped path might name (a run's
    checkpoints, a data folder), and never a file."""
    outputs.check_folder(out, "the output folder")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise UsageError(f"{out} already exists and is not empty", "export into a new folder, or pass --overwrite")
    if not is_export(out):
        raise UsageError(f"{out} is not an earlier export (it has no {MANIFEST}): --overwrite replaces exports only",
                         "export into a new folder, or remove that folder yourself")


# the task's settings that only training reads (interpolated from fairseq's checkpoint group): the
# manifest keeps fairseq's defaults, never the training run's paths; a restore path written as "."
# was once checked as a checkpoint file when the export loaded (IsADirectoryError)
TRAINING_ONLY = ("save_dir", "restore_file")


def _serving_task_settings(settings: Dict) -> Dict:
    """The task's settings for the manifest: absolute paths (the data folder) become ``.`` (the
    export folder itself is the data folder when it loads) and the settings of :data:`TRAINING_ONLY`
    fairseq's defaults, whatever the training run gave them."""
    from fairseq.dataclass.configs import CheckpointConfig

    defaults = CheckpointConfig()
    out = {k: "." if isinstance(v, str) and os.path.isabs(v) else v for k, v in settings.items()}
    out.update({k: getattr(defaults, k) for k in TRAINING_ONLY if k in out})
    return out


def _plain(settings: Dict) -> Dict:
    """A Namespace's settings as JSON values (tuples become lists, anything else its text)."""
    def value(v):
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (list, tuple)):
            return [value(x) for x in v]
        return str(v)
    return {k: value(v) for k, v in settings.items()}


def _without_paths(settings: Dict) -> Dict:
    """``settings`` without the absolute paths of this machine (data, save dir, user dir), nested
    settings too: none is needed to rebuild the model, and the task's defaults fill them in."""
    def keep(v) -> bool:
        return not (isinstance(v, str) and os.path.isabs(v))
    return {k: _without_paths(v) if isinstance(v, dict) else v for k, v in settings.items() if keep(v)}


def is_export(path) -> bool:
    path = outputs.loadable(path)  # an export whose writer was killed mid-swap is still one
    return path.is_dir() and (path / MANIFEST).is_file()


REEXPORT = "export the checkpoint again: python -m leebert_plugin.export CHECKPOINT DATA OUT (--overwrite replaces it)"


def read_manifest(folder) -> Dict:
    """``FOLDER/export.json``, checked: a JSON object of this plugin's format with the fields the
    loader reads, else one line naming the folder and what is wrong."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{path} cannot be read ({type(err).__name__}: {str(err)[:80]})", REEXPORT) from None
    if not isinstance(manifest, dict):
        raise UsageError(f"{path} holds a JSON {type(manifest).__name__}, not the export's settings", REEXPORT)
    if manifest.get("format") != FORMAT:
        raise UsageError(f"{path} is format {manifest.get('format')}, this plugin reads {FORMAT}",
                         "export the checkpoint again with this version")
    missing = [k for k in ("model", "task", "labels", "bpe") if k not in manifest]
    wrong = [k for k in ("model", "task") if k not in missing and not isinstance(manifest[k], dict)]
    if missing or wrong:
        raise UsageError(f"{path} lacks {', '.join(missing)}" if missing else f"{path}: {wrong[0]} is not a JSON object",
                         REEXPORT)
    return manifest


def _read_weights(folder: Path) -> Dict[str, torch.Tensor]:
    """``FOLDER/model.pt``, refused in one line when missing, damaged or not a tensor dict."""
    path = folder / "model.pt"
    if not path.is_file():
        raise UsageError(f"{folder} is an export folder without its model.pt", REEXPORT)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated zip, a damaged pickle, a refused global: one line each
        raise UsageError(f"{path} is not readable ({type(err).__name__}: {str(err)[:80]})", REEXPORT) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"{path} is not an export's weights (a dict of tensors)", REEXPORT)
    return state


def read_export(folder: Path, device) -> Tuple[torch.nn.Module, object, Optional[Tuple[str, Dict[str, str]]]]:
    """The model (eval mode, on ``device``), its task and its bpe with the options (None: none), from
    an export folder."""
    from fairseq import tasks

    import leebert_plugin  # noqa: F401  (registers the task and the model)
    from leebert_plugin.models.checkpoint_fit import check_state_dict_fits
    from leebert_plugin.runtime.devices import resolve_device

    folder = outputs.loadable(Path(folder).resolve())
    manifest = read_manifest(folder)
    needed = ["input0/dict.txt"] + ([] if manifest.get("regression") else ["label/dict.txt"])
    for rel in needed:
        if not (folder / rel).is_file():
            raise UsageError(f"{folder} is an export folder without its {rel}", REEXPORT)
    target = resolve_device(device)
    state = _read_weights(folder)
    # a saved model, not a training run: the training-only checks (restore file, save dir) do not apply
    model_cfg = manifest["model"]
    try:
        task = tasks.setup_task(OmegaConf.create(dict(manifest["task"], data=str(folder))), from_checkpoint=True)
        model = task.build_model(Namespace(**model_cfg) if manifest.get("model_is_namespace") else OmegaConf.create(model_cfg))
    except UsageError:
        raise
    except Exception as err:  # settings edited by hand or cut short: fairseq fails on them anywhere inside
        raise UsageError(f"the settings in {folder / MANIFEST} do not build a model ({type(err).__name__}: "
                         f"{str(err).splitlines()[0][:100] if str(err) else ''})", REEXPORT) from None
    # compared as written, before the model's own load upgrades the state (it would give a missing
    # exit head fresh random weights, as it does for a plain RoBERTa checkpoint)
    check_state_dict_fits(model, state, "", f"the model {folder / MANIFEST} describes", REEXPORT)
    model.load_state_dict(state, strict=True)
    bpe = None
    if manifest["bpe"] is not None:
        options = {k: str(folder / v) if k in FILE_OPTIONS else v for k, v in manifest["bpe"]["options"].items()}
        bpe = manifest["bpe"]["name"], options
    return model.eval().to(target), task, bpe


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = cli.ArgumentParser(prog="python -m leebert_plugin.export", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="a trained checkpoint (checkpoint_best.pt)")
    p.add_argument("data", type=Path, help="the data folder it was trained on (for its dictionaries, prepare.json)")
    p.add_argument("out", type=Path, help="the folder to write (new, or --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    args, options = parse_with_optional_bpe(p, argv)
    out = export(args.checkpoint, args.data, args.out, args.bpe, options, args.overwrite)
    print(f"exported {args.checkpoint} to {out}; load it with EarlyExitClassifier.from_pretrained({str(out)!r})")


if __name__ == "__main__":
    cli.run(main)
