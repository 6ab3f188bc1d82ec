"""``scan``: read checkpoints and select the tensors a report shows."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inspector.adapter import read_adapter
from inspector.errors import InvalidInputError, UsageError
from inspector.io.checkpoint import Checkpoint, read_checkpoint
from inspector.io.tensor import TensorInfo
from inspector.patterns import Matcher, PatternRefused, compile_bounded

MAX_PATTERN = 1000


@dataclass(frozen=True)
class ScannedCheckpoint:
    checkpoint: Checkpoint
    shown: tuple[TensorInfo, ...] | None  # None: no tensor table requested
    # Adapters only: why check and merge would refuse its adapter_config.json (None: it is valid).
    # scan stays descriptive (exit 0) but must not show a broken adapter as if it were fine.
    invalid: str | None = None
    values: dict | None = None  # scan --values: inspector.values.scan_checkpoint_values


@dataclass(frozen=True)
class ScanResult:
    checkpoints: tuple[ScannedCheckpoint, ...]
    match: str | None


def compile_match(pattern: str | None) -> Callable[[str], bool] | None:
    """``re.search`` with ``pattern``, with bounded work: tensor names come from untrusted files."""
    if pattern is None:
        return None
    if len(pattern) > MAX_PATTERN:
        raise UsageError("Invalid --match", None, f"the pattern is longer than {MAX_PATTERN} characters", "Use a shorter regular expression.")
    try:
        compile_bounded(pattern)
    except re.error as exc:
        raise UsageError("Invalid --match", None, f"{pattern!r} is not a regular expression ({exc})", "Quote the pattern, e.g. --match 'embed|lm_head'.") from exc
    except ValueError as exc:
        raise UsageError("Invalid --match", None, f"{pattern!r} {exc}", "Use a simpler regular expression, e.g. --match 'embed|lm_head'.") from exc
    matcher = Matcher()

    def search(name: str) -> bool:
        try:
            return matcher.search("--match", pattern, name)
        except PatternRefused as exc:
            raise UsageError("Invalid --match", None, f"{pattern!r} {exc.why}", "Use a simpler regular expression, e.g. --match 'embed|lm_head'.") from None

    return search


def adapter_problem(ckpt: Checkpoint) -> str | None:
    """Why ``read_adapter`` (what check and merge run first) refuses an adapter; None for a valid one or a model."""
    if ckpt.kind != "adapter":
        return None
    try:
        read_adapter(ckpt)
    except InvalidInputError as exc:
        return f"{exc.what}: {exc.why}"
    return None


def scan(paths: list[str | Path], *, tensors: bool = False, match: str | None = None, values: bool = False) -> ScanResult:
    """Read each path's headers; with ``tensors`` or ``match`` keep the tensor list (filtered by ``match``);
    with ``values`` also stream each checkpoint's values (torch imported then only)."""
    matches = compile_match(match)
    out = []
    for path in paths:
        ckpt = read_checkpoint(path)
        shown = None
        if tensors or matches is not None:
            shown = tuple(t for t in ckpt.tensors if matches is None or matches(t.name))
        measured = None
        if values:
            from inspector.values import scan_checkpoint_values

            if ckpt.remote is not None:
                from inspector.io.hub import refuse_data

                refuse_data((ckpt,), "scan --values")

            measured = scan_checkpoint_values(ckpt)
        out.append(ScannedCheckpoint(ckpt, shown, adapter_problem(ckpt), measured))
    return ScanResult(tuple(out), match)


def value_lines(values: dict | None) -> list[str]:
    """What every format says of scan --values' findings (nothing when there are none)."""
    if values is None:
        return []
    lines = [f"{v['name']} ({v['dtype']}) holds {v['nan']} NaN and {v['inf']} Inf" for v in values["nonfinite"]]
    for t in values["identical_tail"]:
        what = "all zeros" if t["zero"] else "identical"
        lines.append(f"{t['tensor']}: its last {t['tail_rows']} of {t['rows']} rows are {what}: new rows a resize initialised and no one trained?")
    return lines
