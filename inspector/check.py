"""``check``: read both checkpoints, pick the tokenizer, diagnose."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

from inspector.adapter import Adapter, foreign_lora, read_adapter
from inspector.diagnose import Diagnosis, diagnose
from inspector.errors import InspectorError, UsageError
from inspector.findings import Code
from inspector.io.checkpoint import NATIVE_FORMAT_HINT, Checkpoint, read_checkpoint
from inspector.io.paths import locate
from inspector.io.tokenizer import TokenizerFacts, read_tokenizer
from inspector.targets import TARGETS
from inspector.units import printable


def run_check(base_path: str | Checkpoint, adapter_path: str, tokenizer_dir: str | None = None, *, command: str = "check",
              targets: tuple[str, ...] = (), values: bool = False) -> Diagnosis:
    """Read BASE (unless already read) and ADAPTER (headers only) and diagnose them.

    The tokenizer is ``tokenizer_dir`` if given, else the adapter directory's (where training
    scripts save the extended tokenizer), else the base directory's. ``command`` words the usage
    errors for the command that asked (``resize --like`` has no ADAPTER argument). ``targets``: the
    servers whose serving rules apply (``check --target``); ``values``: also read the adapter's values
    (``check --values``, the LI16xx checks).
    """
    return run_checks(base_path, (adapter_path,), tokenizer_dir, command=command, targets=targets, values=values)[0]


def run_checks(base_path: str | Checkpoint, adapter_paths: Sequence[str], tokenizer_dir: str | None = None, *, command: str = "check",
               targets: tuple[str, ...] = (), values: bool = False) -> list[Diagnosis]:
    """``run_check`` for several adapters against one base, which is read once (as is ``tokenizer_dir``).

    Every adapter is read and validated before any is diagnosed: an unreadable one fails the whole
    run (exit 2) before the work, and with several adapters the hint says which of them it was.
    """
    base = base_path if isinstance(base_path, Checkpoint) else read_checkpoint(base_path)
    given: list[TokenizerFacts] = []  # --tokenizer DIR, read at its first use (after the first adapter's checks, as always)
    read: list[tuple[Adapter, TokenizerFacts | None]] = []
    for i, path in enumerate(adapter_paths, 1):
        try:
            adapter = read_checkpoint(path)
            _validate(base, adapter, path, command)
            if values and adapter.remote is not None:
                from inspector.io.hub import refuse_data

                refuse_data((adapter,), "check --values")
            if tokenizer_dir is not None and not given:
                given.append(_given_tokenizer(tokenizer_dir))
            read.append((read_adapter(adapter), given[0] if given else adapter.tokenizer or base.tokenizer))
        except InspectorError as exc:
            if len(adapter_paths) > 1 and _about(exc, path):
                exc.hint = f"{exc.hint} It is ADAPTER {i} of {len(adapter_paths)}: fix it or leave it out (no adapter was checked)."
            raise
    return [diagnose(base, adapter, tokenizer, targets=targets, values=values) for adapter, tokenizer in read]


def _about(exc: InspectorError, given: str) -> bool:
    """Is the error about the adapter ``given`` (its directory, or a file in it)?"""
    if exc.path is None:
        return False
    if exc.path == given:  # (a Hub id read remotely is named as given)
        return True
    try:
        where, root = Path(exc.path).resolve(), locate(given).resolve()
    except (OSError, RuntimeError, InspectorError):  # a symlink loop, an ambiguous Hub id: compare as given
        return exc.path == given
    return where == root or root in where.parents


def _validate(base: Checkpoint, adapter: Checkpoint, adapter_path: str, command: str) -> None:
    """The usage errors of a BASE / ADAPTER pair, in the order one adapter has always met them."""
    label = "--like ADAPTER" if command == "resize" else "ADAPTER"
    for ckpt, role in ((base, "BASE"), (adapter, label)):
        foreign = foreign_lora(ckpt)
        if foreign is not None:
            raise UsageError("Not a PEFT checkpoint", ckpt.path, f"{role} is {foreign[0]}", foreign[1])
    if base.kind == "adapter" and adapter.kind == "model" and command != "resize":
        raise UsageError("Arguments swapped", base.path, f"BASE is a PEFT adapter and {label} is a model", f"Run `lora-inspector {command} {adapter_path} {base.path}{_rest(command)}`.")
    if base.kind != "model":
        raise UsageError("Not a base model", base.path, "BASE is a PEFT adapter, not a model checkpoint", "Pass the base model directory first, then the adapter.")
    if not base.tensors:
        raise UsageError("Not a base model", base.path, f"BASE holds no tensors ({printable(', '.join(base.files))})", "Point at the model's weights, as save_pretrained() wrote them.")
    if (base.root / "params.json").is_file() and not (base.root / "config.json").is_file():
        owner = "Mistral's" if any(f.endswith(".safetensors") for f in base.files) else "Meta's original Llama"
        raise UsageError("Not a Hugging Face model", base.path, f"it is {owner} native format (params.json, {printable(', '.join(base.files))}), "
                         "whose tensor names PEFT adapters do not use", NATIVE_FORMAT_HINT)
    if adapter.kind != "adapter":
        raise UsageError("Not an adapter", adapter_path, f"{label} has no adapter_config.json and no LoRA keys", "Pass the directory PEFT's save_pretrained() wrote for the adapter.")


def _rest(command: str) -> str:
    """What a command takes after BASE ADAPTER, for the hint that swaps them."""
    return {"check": "", "verify": " MERGED"}.get(command, " --out DIR")


def _given_tokenizer(tokenizer_dir: str) -> TokenizerFacts:
    folder = locate(tokenizer_dir)
    if not folder.is_dir():
        raise UsageError("Cannot read tokenizer", tokenizer_dir, "not a directory", "Pass the directory tokenizer.save_pretrained() wrote.")
    tokenizer = read_tokenizer(folder)
    if tokenizer is not None and folder != Path(tokenizer_dir):  # a Hub id (cached or read remotely): named as given
        tokenizer = replace(tokenizer, directory=tokenizer_dir)
    if tokenizer is None:
        raise UsageError("Cannot read tokenizer", tokenizer_dir, "no tokenizer.json, tokenizer.model, vocab.txt or vocab.json in it", "Pass the directory tokenizer.save_pretrained() wrote.")
    return tokenizer


# ---- which findings count: --select / --ignore / --fail-on, and [tool.lora-inspector] -------------

CONFIG_TABLE = "lora-inspector"  # [tool.lora-inspector] in pyproject.toml
CONFIG_KEYS = ("select", "ignore", "fail-on")
FAIL_ON = ("error", "warning")
_CODE_HINT = ("Give codes such as LI101, or a family: a code without its last two digits (LI1 = LI101-LI103, "
              "LI10 = LI1001-LI1004); every code is listed in the README.")


@dataclass(frozen=True)
class Rules:
    """What check reports and when it fails; the flags win over the file, key by key."""

    select: frozenset[Code] | None = None  # None: every code
    ignore: frozenset[Code] = frozenset()
    fail_on: str = "error"
    config: Path | None = None  # the pyproject.toml read, if any

    def keeps(self, code: Code) -> bool:
        return (self.select is None or code in self.select) and code not in self.ignore


@dataclass(frozen=True)
class Selected(Diagnosis):
    """A diagnosis whose findings were filtered by ``Rules``; ``dropped`` counts the ones left out."""

    dropped: int = 0
    rules: Rules = Rules()

    @property
    def note(self) -> str | None:
        """For the reports, where rules are in force: how many findings they left out, and which file set them."""
        return left_out(self.dropped, self.rules)

    def rules_json(self) -> dict:
        r = self.rules
        return {"select": None if r.select is None else sorted(c.code for c in r.select), "ignore": sorted(c.code for c in r.ignore),
                "fail_on": r.fail_on, "config": str(r.config) if r.config else None, "dropped": self.dropped}


def left_out(dropped: int, rules: Rules) -> str | None:
    if not dropped and rules.config is None:
        return None
    where = f"; settings from {rules.config}" if rules.config else ""
    return f"{dropped} finding{'' if dropped == 1 else 's'} left out by --select / --ignore{where}"


def codes_for(selectors: Iterable[str], where: str, path: Path | None = None) -> frozenset[Code]:
    """Finding codes for comma-separated codes and families (``LI101``, ``LI1``); unknown ones are usage errors."""
    found: set[Code] = set()
    for item in selectors:
        for word in item.split(","):
            word = word.strip().upper()
            if not word:
                continue
            matched = {c for c in Code if word in (c.code, c.code[:-2])}
            if not matched:
                raise UsageError(f"Invalid {where}", path, f"{printable(word)!r} is no finding code or family", _CODE_HINT)
            found |= matched
    return frozenset(found)


def _words(value: object, key: str, path: Path | None) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise UsageError(f"Invalid [tool.{CONFIG_TABLE}]", path, f"{key} is {value!r}; expected a list of codes such as [\"LI101\", \"LI4\"]",
                     "Fix the key in pyproject.toml.")


def _file_codes(table: dict, key: str, path: Path | None) -> frozenset[Code]:
    return codes_for(_words(table.get(key, []), key, path), f"[tool.{CONFIG_TABLE}] {key}", path)


def find_config(start: Path) -> tuple[Path, dict] | None:
    """The nearest pyproject.toml with a [tool.lora-inspector] table, walking up from ``start``."""
    for folder in (start, *start.parents):
        candidate = folder / "pyproject.toml"
        try:
            text = candidate.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue  # none here (or not ours to judge): look further up
        if CONFIG_TABLE not in text:  # another project's file, even a broken one, is none of our business
            continue
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            raise UsageError(f"Cannot read [tool.{CONFIG_TABLE}]", candidate, "reading TOML needs Python 3.11 or the tomli package",
                             "Install tomli, or give the settings as flags (--select, --ignore, --fail-on).") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError("Cannot read pyproject.toml", candidate, f"it is not valid TOML ({exc})", "Fix the file, or run from another directory.") from None
        table = data.get("tool", {}).get(CONFIG_TABLE)
        if table is not None:
            if not isinstance(table, dict):
                raise UsageError(f"Invalid [tool.{CONFIG_TABLE}]", candidate, "it is not a table", f"Write it as a table: [tool.{CONFIG_TABLE}] with select / ignore / fail-on keys.")
            return candidate, table
    return None


def rules_for(select: Iterable[str] = (), ignore: Iterable[str] = (), fail_on: str | None = None, *, start: Path | None = None) -> Rules:
    """Flags first, then the nearest [tool.lora-inspector] for each setting no flag gave."""
    select, ignore = tuple(select), tuple(ignore)
    try:
        here = start or Path.cwd()
    except OSError:  # the working directory was removed: no file to read
        here = None
    found = find_config(here) if here is not None else None
    path, table = found if found else (None, {})
    unknown = [k for k in table if k not in CONFIG_KEYS]
    if unknown:
        raise UsageError(f"Invalid [tool.{CONFIG_TABLE}]", path, f"unknown key {printable(str(unknown[0]))!r}", f"The keys are {', '.join(CONFIG_KEYS)}.")
    chosen = codes_for(select, "--select") if select else (_file_codes(table, "select", path) if "select" in table else None)
    if chosen is not None and not chosen:  # `--select "$CODES"` with CODES empty would pass every adapter
        where = "--select" if select else f"[tool.{CONFIG_TABLE}] select"
        raise UsageError(f"Invalid {where}", None if select else path, "it names no finding code, so every finding would be left out", _CODE_HINT)
    dropped = codes_for(ignore, "--ignore") if ignore else _file_codes(table, "ignore", path)
    if fail_on is None:
        fail_on = table.get("fail-on", "error")
        if fail_on not in FAIL_ON:
            raise UsageError(f"Invalid [tool.{CONFIG_TABLE}]", path, f"fail-on is {fail_on!r}; expected \"error\" or \"warning\"", "Fix the key in pyproject.toml.")
    return Rules(chosen, dropped, fail_on, path)


def apply_rules(diagnosis: Diagnosis, rules: Rules) -> Selected:
    """The diagnosis with only the findings ``rules`` keep: the exit code and every format see these."""
    kept = tuple(f for f in diagnosis.findings if rules.keeps(f.code))
    own = {f.name: getattr(diagnosis, f.name) for f in fields(diagnosis) if f.init and f.name not in ("dropped", "rules")}
    return Selected(**{**own, "findings": kept}, dropped=len(diagnosis.findings) - len(kept), rules=rules)


# ---- several adapters against one base ---------------------------------------------------------

# What a server does with an adapter, worst last: a silent divergence is worse than a refusal.
OUTCOMES = ("ok", "flag", "refused", "diverges")
OUTCOME_LABELS = {"ok": "ok", "flag": "flag needed", "refused": "refused", "diverges": "diverges"}


@dataclass(frozen=True)
class Fleet:
    """``check BASE ADAPTER ADAPTER ...``: one diagnosis per adapter (rules applied), one base."""

    results: tuple[Diagnosis, ...]
    targets: tuple[str, ...] = ()  # the servers asked for (--target), in table order
    fail_on: str = "error"

    def fails(self) -> bool:
        """The exit code is the worst over the adapters."""
        return any(d.fails(self.fail_on) for d in self.results)

    def verdict(self, diagnosis: Diagnosis) -> str:
        return "fails" if diagnosis.fails(self.fail_on) else "passes"

    def outcome(self, diagnosis: Diagnosis, target: str) -> str:
        """The worst outcome among the adapter's findings for ``target`` ("ok" when none)."""
        found = [f.outcome for f in diagnosis.findings if f.target == target and f.outcome in OUTCOMES]
        return max(found, key=OUTCOMES.index, default="ok")

    @property
    def base(self) -> Checkpoint:
        return self.results[0].base

    @property
    def titles(self) -> tuple[str, ...]:
        """The targets as reports name them ("vLLM")."""
        return tuple(TARGETS[t].title for t in self.targets)

    @property
    def note(self) -> str | None:
        """As ``Selected.note``, over all the adapters."""
        rules = [d.rules for d in self.results if isinstance(d, Selected)]
        return left_out(sum(d.dropped for d in self.results if isinstance(d, Selected)), rules[0]) if rules else None

    def counts(self) -> dict[str, int]:
        """Findings per severity over all the adapters."""
        return {s: sum(d.summary[s] for d in self.results) for s in ("error", "warning", "info")}
