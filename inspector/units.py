"""Human-readable numbers shared by reports and finding messages."""

from __future__ import annotations


def printable(text: str) -> str:
    """Names and values from files, safe for a terminal or CI log: control characters shown as \\xNN,
    newlines included (ESC starts terminal escape sequences; a newline in a tensor name would draw a
    row of its own in a table)."""
    return "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}" for c in text)


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_count(n: int) -> str:
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{suffix}"
    return str(n)


def counts_str(summary: dict[str, int]) -> str:
    """"2 errors, 1 warning, 0 info": check's summary line, singular where it is one."""
    e, w = summary["error"], summary["warning"]
    return f"{e} error{'' if e == 1 else 's'}, {w} warning{'' if w == 1 else 's'}, {summary['info']} info"


def shape_str(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def dtypes_str(dtypes: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in dtypes.items()) or "-"


def value_str(value) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "[]"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items()) if value else "{}"
    return str(value)
