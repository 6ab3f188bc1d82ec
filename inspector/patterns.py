"""Regular expressions from untrusted files, matched with bounded work (see docs/threat-model.md, case 20).

PEFT matches ``target_modules`` / ``exclude_modules`` with ``re.fullmatch`` and ``rank_pattern`` /
``alpha_pattern`` keys with ``re.match(rf"(.*\\.)?({key})$", name)``. Python's ``re`` backtracks without
limit: ``".*" * 12 + "Z"`` takes 75 s against one 31-character module name. So here:

* ``refusal`` reads a pattern with ``re``'s own parser (its meaning is re's) and names the shapes that
  backtrack or blow up: nested repeats, long chains of variable repeats, huge repeat counts.
* ``Matcher`` matches with the ``regex`` module, which takes a timeout, under one time budget shared by
  every pattern it serves. ``regex`` reads a copy rebuilt from re's parse tree with every literal
  escaped, so its extra syntax (fuzzy ``a{e<=1}``, POSIX ``[[:alpha:]]``) never changes what matches.
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass
from typing import Literal

import regex

try:  # the parser behind re.compile: public as sre_parse until 3.11, re._parser since
    from re import _parser as _sre_parse
except ImportError:  # pragma: no cover - Python 3.10
    import sre_parse as _sre_parse

MAX_CHAIN = 6  # variable repeats (.*, \d+, {1,3}) one match may try in a row; Unsloth's generated patterns use 4
MAX_WEIGHT = 10_000  # pattern items after counted repeats are spelled out (regex's compiler does that)
BUDGET_S = 0.5  # matching time one Matcher allows in all...
PER_CALL_S = 20e-6  # ...plus this per match: an ordinary pattern takes about 1 µs per module name

How = Literal["fullmatch", "match", "search"]

_REPEATS = {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}
_AT = {"AT_BEGINNING": "^", "AT_BEGINNING_STRING": r"\A", "AT_END": "$", "AT_END_STRING": r"\Z", "AT_BOUNDARY": r"\b", "AT_NON_BOUNDARY": r"\B"}
if re.search(r"\B", "") is None:  # re before 3.14: \B never matches the empty string; regex's \B does
    _AT["AT_NON_BOUNDARY"] = r"(?:\B(?!\A\Z))"
_CATEGORY = {"CATEGORY_DIGIT": r"\d", "CATEGORY_NOT_DIGIT": r"\D", "CATEGORY_SPACE": r"\s", "CATEGORY_NOT_SPACE": r"\S", "CATEGORY_WORD": r"\w", "CATEGORY_NOT_WORD": r"\W"}
_FLAGS = ((re.IGNORECASE, "i", regex.IGNORECASE), (re.MULTILINE, "m", regex.MULTILINE), (re.DOTALL, "s", regex.DOTALL), (re.ASCII, "a", regex.ASCII), (re.UNICODE, "u", regex.UNICODE))


class PatternRefused(Exception):
    """A pattern that cannot be matched in bounded work; ``field`` names where it came from."""

    def __init__(self, field: str, pattern: str, why: str) -> None:
        self.field, self.pattern, self.why = field, pattern, why
        super().__init__(f"{field} {pattern!r} {why}")


def _repeat_is_variable(low: int, high: int) -> bool:
    # The engine chooses how many times (and backtracks over the choice); "?" is only two choices.
    return high is _sre_parse.MAXREPEAT or (high > low and high > 1)


def _children(op: str, arg) -> list:
    """The sub-patterns of one parsed item, for the walks below."""
    if op in _REPEATS:
        return [arg[2]]
    if op == "SUBPATTERN":
        return [arg[-1]]
    if op in ("ASSERT", "ASSERT_NOT"):
        return [arg[1]]
    if op == "ATOMIC_GROUP":
        return [arg]
    if op == "BRANCH":
        return list(arg[1])
    if op == "GROUPREF_EXISTS":
        return [b for b in arg[1:] if b is not None]
    return []


def nested_repeat(seq) -> bool:
    """Does a parsed pattern hold a repeat (max > 1) around another repeat or an alternation?
    Those are the shapes that backtrack exponentially, e.g. (a+)+$, (a*)*, (a|aa)*."""

    def walk(seq, inside: bool) -> bool:
        for op, arg in seq:
            name = str(op)
            if name in _REPEATS:
                low, high, sub = arg
                unbounded = high is _sre_parse.MAXREPEAT or high > 1
                if inside and unbounded:
                    return True
                if walk(sub, inside or unbounded):
                    return True
            elif name == "BRANCH" and inside:
                return True
            elif any(walk(sub, inside) for sub in _children(name, arg)):
                return True
        return False

    return walk(seq, False)


def chain(seq) -> int:
    """The most variable repeats one path through the pattern tries in a row. Each multiplies the
    ways a failing match backtracks: k of them cost about n**k / k! steps on an n-character name."""
    total = 0
    for op, arg in seq:
        name = str(op)
        subs = [chain(sub) for sub in _children(name, arg)]
        if name in _REPEATS:
            total += _repeat_is_variable(arg[0], arg[1]) + subs[0]
        elif name in ("BRANCH", "GROUPREF_EXISTS"):
            total += max(subs, default=0)  # alternatives: one of them runs
        else:
            total += sum(subs)
    return total


def weight(seq) -> int:
    """How many items the pattern has once counted repeats are spelled out (a{1000} is 1000)."""
    total = 0
    for op, arg in seq:
        name = str(op)
        subs = sum(weight(sub) for sub in _children(name, arg))
        total += max(arg[0], 1) * subs if name in _REPEATS else 1 + subs
    return total


def _char(code: int) -> str:
    if code < 128 and chr(code).isalnum():
        return chr(code)
    return f"\\x{code:02x}" if code < 0x100 else (f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")


def _set(items) -> str:
    out = []
    for op, arg in items:
        name = str(op)
        if name == "NEGATE":
            out.append("^")
        elif name == "LITERAL":
            out.append(_char(arg))
        elif name == "RANGE":
            out.append(f"{_char(arg[0])}-{_char(arg[1])}")
        elif name == "CATEGORY":
            out.append(_CATEGORY[str(arg)])
        else:
            raise ValueError(f"set item {name}")
    return "[" + "".join(out) + "]"


def _flag_letters(flags: int) -> str:
    return "".join(letter for bit, letter, _ in _FLAGS if flags & bit)


def _quantifier(op: str, low: int, high: int) -> str:
    count = f"{{{low},}}" if high is _sre_parse.MAXREPEAT else f"{{{low},{high}}}"
    return count + {"MAX_REPEAT": "", "MIN_REPEAT": "?", "POSSESSIVE_REPEAT": "+"}[op]


def emit(seq) -> str:
    """Spell a parse tree of ``re`` as a pattern with one reading in both ``re`` and ``regex``: every
    literal escaped, every group explicit, backreferences by number."""
    out = []
    for op, arg in seq:
        name = str(op)
        if name == "LITERAL":
            out.append(_char(arg))
        elif name == "NOT_LITERAL":
            out.append(f"[^{_char(arg)}]")
        elif name == "ANY":
            out.append(".")
        elif name == "IN":
            out.append(_set(arg))
        elif name == "CATEGORY":
            out.append(_CATEGORY[str(arg)])
        elif name == "AT":
            out.append(_AT[str(arg)])
        elif name in _REPEATS:
            out.append(f"(?:{emit(arg[2])}){_quantifier(name, arg[0], arg[1])}")
        elif name == "SUBPATTERN":
            group, add, remove, sub = arg
            body = emit(sub)
            if add or remove:
                body = f"(?{_flag_letters(add)}{'-' + _flag_letters(remove) if _flag_letters(remove) else ''}:{body})"
            out.append(f"({body})" if group is not None else f"(?:{body})")
        elif name == "BRANCH":
            out.append("(?:" + "|".join(emit(b) for b in arg[1]) + ")")
        elif name == "GROUPREF":
            out.append(f"(?:\\g<{arg}>)")
        elif name == "GROUPREF_EXISTS":
            group, yes, no = arg
            out.append(f"(?({group}){emit(yes)}" + (f"|{emit(no)})" if no is not None else ")"))
        elif name in ("ASSERT", "ASSERT_NOT"):
            direction, sub = arg
            out.append("(?" + ("<" if direction < 0 else "") + ("=" if name == "ASSERT" else "!") + emit(sub) + ")")
        elif name == "ATOMIC_GROUP":
            out.append(f"(?>{emit(arg)})")
        else:
            raise ValueError(f"pattern item {name}")
    return "".join(out)


def parse(pattern: str):
    """``re``'s parse tree of ``pattern``; raises re.error as re.compile would."""
    with warnings.catch_warnings():  # re's FutureWarning on "[[": the pattern is data, and re's reading is the one kept
        warnings.simplefilter("ignore", FutureWarning)
        return _sre_parse.parse(pattern)


def compile_bounded(pattern: str) -> regex.Pattern:
    """``pattern`` as a ``regex`` pattern that means what ``re`` reads. Raises re.error for what re
    rejects and ValueError for what regex could not compile in bounded memory."""
    parsed = parse(pattern)
    if weight(parsed) > MAX_WEIGHT:
        raise ValueError(f"repeats its parts more than {MAX_WEIGHT:,} times in all, longer than any module name")
    # re.VERBOSE is left out: the parser already dropped the whitespace and comments it allows.
    flags = 0
    for bit, _, to in _FLAGS:
        if parsed.state.flags & bit:
            flags |= to
    try:
        return regex.compile(emit(parsed), flags)
    except (regex.error, ValueError, KeyError) as exc:  # pragma: no cover - an item emit does not know
        raise ValueError(f"cannot be matched with bounded work ({exc})") from exc


def refusal(pattern: str) -> str | None:
    """Why a valid pattern from a config cannot be matched safely, or None; raises re.error for an
    invalid one. The shapes named here would make PEFT's own ``re`` hang on the same adapter."""
    parsed = parse(pattern)
    if nested_repeat(parsed):
        return "nests a repeat inside a repeat, which can take exponential time to match"
    if (links := chain(parsed)) > MAX_CHAIN:
        return (f"chains {links} variable repeats such as .* (at most {MAX_CHAIN}), which can take polynomial time "
                "to match (PEFT's re can spend minutes on one module name)")
    try:
        compile_bounded(pattern)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass
class _Entry:
    field: str
    pattern: str
    compiled: regex.Pattern
    spent: float = 0.0


class Matcher:
    """Matches the patterns of one input (a config, a command line) with bounded work in all: total
    matching time stays within ``budget_s`` plus ``per_call_s`` per name matched, however many names
    and patterns. Past that, the pattern that took the most time is refused. Results are cached."""

    def __init__(self, budget_s: float = BUDGET_S, per_call_s: float = PER_CALL_S) -> None:
        self._entries: dict[str, _Entry] = {}
        self._results: dict[tuple[str, str, str], bool] = {}
        self._allowed = budget_s
        self._per_call = per_call_s
        self._spent = 0.0
        self._refused: tuple[str, str, str] | None = None

    def fullmatch(self, field: str, pattern: str, name: str) -> bool:
        """``re.fullmatch(pattern, name)``."""
        return self._run(field, pattern, pattern, "fullmatch", name)

    def search(self, field: str, pattern: str, name: str) -> bool:
        """``re.search(pattern, name)``."""
        return self._run(field, pattern, pattern, "search", name)

    def peft_key(self, field: str, key: str, name: str) -> bool:
        """PEFT's get_pattern_key test: ``re.match(rf"(.*\\.)?({key})$", name)``."""
        return self._run(field, key, rf"(.*\.)?({key})$", "match", name)

    def _run(self, field: str, pattern: str, source: str, how: How, name: str) -> bool:
        if self._refused is not None:
            raise PatternRefused(*self._refused)
        cached = self._results.get((how, source, name))
        if cached is not None:
            return cached
        entry = self._entry(field, pattern, source)
        self._allowed += self._per_call
        start = time.perf_counter()
        try:
            found: bool | None = getattr(entry.compiled, how)(name, timeout=max(self._allowed - self._spent, 1e-3)) is not None
        except TimeoutError:
            found = None
        elapsed = time.perf_counter() - start
        entry.spent += elapsed
        self._spent += elapsed
        if found is None or self._spent > self._allowed:
            self._refuse()
        self._results[(how, source, name)] = found
        return found

    def _entry(self, field: str, pattern: str, source: str) -> _Entry:
        entry = self._entries.get(source)
        if entry is None:
            try:
                compiled = compile_bounded(source)
            except (re.error, ValueError) as exc:
                self._refused = (field, pattern, str(exc) if isinstance(exc, ValueError) else f"is not a valid regular expression ({exc})")
                raise PatternRefused(*self._refused) from None
            entry = self._entries[source] = _Entry(field, pattern, compiled)
        return entry

    def _refuse(self) -> None:
        # The shared budget is spent: blame the pattern that spent most of it, not the last one to run.
        worst = max(self._entries.values(), key=lambda e: e.spent)
        self._refused = (worst.field, worst.pattern, f"was refused after {worst.spent:.2f} s of matching: "
                                                     "it backtracks too much to match with bounded work")
        raise PatternRefused(*self._refused)
