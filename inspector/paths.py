"""Where a checkpoint's files may really live (HOSTILE.md 13, 21).

A directory from a stranger can hold a ``model.safetensors`` that is a symlink to
``~/.ssh/id_rsa``: scan would read it and merge would copy its bytes into the output. A file found
*in* a checkpoint directory is therefore used only when its real path stays inside that directory,
or follows the Hugging Face cache layout, where ``<repo>/snapshots/<rev>/<file>`` links to
``<repo>/blobs/<sha>``. A path the user names directly is their choice and is not checked.
"""

from __future__ import annotations

from pathlib import Path


def resolves_inside(root: Path, path: Path) -> bool:
    """Does ``path`` (a file found in checkpoint directory ``root``) really live inside ``root``?"""
    real_root = Path(root).resolve()
    real = Path(path).resolve()
    if real.is_relative_to(real_root):
        return True
    # The Hugging Face cache keeps files in <repo>/blobs and links them from <repo>/snapshots/<rev>/.
    return real_root.parent.name == "snapshots" and real.is_relative_to(real_root.parent.parent / "blobs")
