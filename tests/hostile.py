"""Hostile inputs shared by the reader and CLI tests: pickle gadgets and raw safetensors-shaped files."""

from __future__ import annotations

import builtins
import json
import os
import shlex
import struct
from pathlib import Path


class SystemGadget:
    """Unpickling this runs a shell command that creates ``sentinel``."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.sentinel))}",))


class ExecGadget:
    """Unpickling this runs Python source that creates ``sentinel``."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.sentinel)!r}, 'w').close()",))


def write_raw(path: Path, header: dict | bytes, data: bytes = b"", *, length: int | None = None) -> Path:
    """A safetensors-shaped file from a header (dict or raw bytes) and a data region, unchecked."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + data)
    return path
