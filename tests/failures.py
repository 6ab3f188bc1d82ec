"""A failed run's stdout: empty, except with --format json, where it holds the
same Error/Hint as a schema-1 document, so that stdout always parses."""

from __future__ import annotations

import json

from inspector.units import printable


def assert_json_error(out: str, err: str, command: str | None = None) -> dict:
    """``out`` is the JSON twin of stderr's last two lines (``Error:`` / ``Hint:``); returns its "error"."""
    doc = json.loads(out)
    assert doc["schema"] == 1 and set(doc["error"]) == {"message", "path", "hint"}, doc
    assert command is None or doc["command"] == command
    error = doc["error"]
    assert err.splitlines()[-2:] == [f"Error: {printable(error['message'])}", f"Hint: {printable(error['hint'])}"], err
    return error


def assert_no_report(out: str, err: str) -> None:
    """Nothing on stdout but the failure itself (for helpers that serve every --format)."""
    if out:
        assert_json_error(out, err)
