"""The data root and the real dataset loaders (torchvision's MNIST, torch_geometric's Planetoid).

The data root is laid out as the loaders expect: ``<root>/MNIST/raw/...`` and
``<root>/Planetoid/<Name>/raw/...``. It is ``--data-dir``, else the environment
variable ``RBPBENCH_DATA_DIR``, else ``$XDG_CACHE_HOME/rbpbench/data``
(``~/.cache/rbpbench/data``). Loaders download into it where a network exists;
where the files are missing and nothing can be downloaded they raise
:class:`DatasetUnavailable`, which a sweep records as a skipped cell.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "RBPBENCH_DATA_DIR"


class DatasetUnavailable(Exception):
    """A dataset's files are not in the data root and could not be downloaded."""


def data_root() -> Path:
    explicit = os.environ.get(DATA_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "rbpbench" / "data"


def mnist(*, train: bool, root: Path | None = None) -> Any:
    """torchvision's MNIST from ``<root>/MNIST/raw`` (downloaded there if missing and possible)."""
    from torchvision.datasets import MNIST

    root = root or data_root()
    try:
        return MNIST(str(root), train=train, download=True)
    except Exception as exc:  # urllib, HTTP and checksum errors all mean: not available here
        raise DatasetUnavailable(
            f"MNIST is not available offline: place the four raw files under {root}/MNIST/raw "
            f"(or set --data-dir / {DATA_DIR_ENV}); download failed: {type(exc).__name__}: {exc}"
        ) from exc
