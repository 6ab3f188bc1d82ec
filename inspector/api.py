"""The Python API: check and scan without a subprocess (docs/api.md).

    from inspector.api import check, report

    diagnosis = check("meta-llama/Llama-2-7b-hf", "out/adapter")   # Hub ids read remotely, headers only
    if diagnosis.fails("error"):
        raise SystemExit(report(diagnosis)["findings"])

``check`` returns the ``Diagnosis`` that ``check --format json`` is made from; ``report`` gives that
JSON object (schema: docs/json.md). Errors are ``inspector.errors.InspectorError`` (``message`` and
``hint``, as the CLI prints them). Neither torch nor transformers is imported (unless ``values``).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from inspector.diagnose import Diagnosis
    from inspector.scan import ScanResult


def check(base: str | Path, adapter: str | Path, *, tokenizer: str | Path | None = None, targets: Iterable[str] = (),
          values: bool = False, offline: bool = False) -> Diagnosis:
    """What ``lora-inspector check BASE ADAPTER`` finds. ``base`` and ``adapter`` are directories,
    files or Hub ids (``org/name[@rev]``: the local cache, else read remotely unless ``offline``).
    ``targets``: servers for the serving checks (``check --target``); ``values``: also stream the
    adapter's values (LI16xx; a local adapter only). Findings: ``diagnosis.findings``; verdict:
    ``diagnosis.fails("error")`` (or ``"warning"``)."""
    from inspector.check import run_check
    from inspector.errors import UsageError
    from inspector.io.paths import remote_reads
    from inspector.targets import TARGET_NAMES, resolve

    try:
        servers = resolve(tuple(targets))
    except KeyError as exc:
        raise UsageError("Unknown target", None, f"{exc.args[0]!r} is not a server lora-inspector knows", f"Use one of: {', '.join(TARGET_NAMES)}.") from None
    with remote_reads(offline=offline):
        return run_check(str(base), str(adapter), None if tokenizer is None else str(tokenizer), targets=servers, values=values)


def scan(*paths: str | Path, tensors: bool = False, offline: bool = False) -> ScanResult:
    """What ``lora-inspector scan PATH...`` reads: ``result.checkpoints[i].checkpoint`` (kind, files,
    tensors, config, tokenizer, and ``remote`` for a Hub id read remotely)."""
    from inspector.io.paths import remote_reads
    from inspector.scan import scan as run_scan

    with remote_reads(offline=offline):
        return run_scan(list(paths), tensors=tensors)


def report(result: Diagnosis | ScanResult) -> dict:
    """The JSON object ``--format json`` prints for ``result`` (schema 1, docs/json.md)."""
    import json

    from inspector.report.jsonfmt import Json, check_report
    from inspector.scan import ScanResult

    if isinstance(result, ScanResult):
        return json.loads(Json().scan(result))
    return check_report(result)
