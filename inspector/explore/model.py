"""What ``explore`` shows, built from headers only: entries (one per tensor, with what the adapter does
to it and the findings naming it) arranged as a module tree with layers grouped.

No textual and no torch here: the grouping, sorting, search and side-by-side facts are tested
without a terminal (the widgets live in ``inspector/explore/app.py``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from inspector.adapter import read_adapter
from inspector.binding import Binding, shell_command
from inspector.diagnose import Diagnosis
from inspector.errors import UsageError
from inspector.findings import Finding, severity_rank
from inspector.io.checkpoint import Checkpoint, read_checkpoint
from inspector.io.tensor import TensorInfo
from inspector.units import human_bytes, shape_str

Kind = Literal["LoRA delta", "replaced", "grown", "trainable tokens"]
Side = Literal["base", "adapter"]
ADAPTER_ONLY = "(adapter only)"  # the tree's group for adapter tensors that touch no base tensor
_DIGITS = re.compile(r"\d{1,18}")


@dataclass(frozen=True)
class Effect:
    """One thing the adapter does to a base tensor."""

    kind: Kind
    tensors: tuple[TensorInfo, ...]  # the adapter tensors doing it (lora_A, lora_B, ...; the copy; the delta)
    summary: str  # "r=4, alpha=8 (scale 2)", "32000 -> 70840 rows", ...
    shape: tuple[int, ...] | None = None  # the shape the base tensor gets (a copy's, a growth's)
    rank: int | None = None  # LoRA

    @property
    def tag(self) -> str:
        """A few characters for the tree: "LoRA r=16", "grown", ..."""
        return f"LoRA r={self.rank}" if self.rank is not None else self.kind


@dataclass(frozen=True)
class Entry:
    """One tensor of the tree: a base tensor with the adapter's effects on it, or an adapter tensor
    shown on its own (an adapter opened alone, or one that touches no base tensor)."""

    path: tuple[str, ...]  # where it sits in the tree (its name split at dots)
    info: TensorInfo
    side: Side
    effects: tuple[Effect, ...] = ()
    findings: tuple[Finding, ...] = ()
    note: str | None = None  # why an adapter tensor stands alone

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def mismatch(self) -> bool:
        """The adapter gives the tensor another shape, or an error finding names it."""
        return any(e.shape is not None and e.shape != self.info.shape for e in self.effects) or self.severity == "error"

    @property
    def severity(self) -> str | None:
        return min((f.severity for f in self.findings), key=severity_rank, default=None)

    @property
    def keys(self) -> tuple[str, ...]:
        """Every tensor name the entry stands for: searched by ``/`` and matched to findings."""
        return (self.info.name, *(t.name for e in self.effects for t in e.tensors))


@dataclass
class Node:
    """A module (a tensor name prefix) or a tensor of the tree, with totals over everything below."""

    label: str
    name: str = ""  # the full dotted prefix (model.layers.1), for the detail panel
    entry: Entry | None = None
    children: list[Node] = field(default_factory=list)
    group: str | None = None  # "80 layers" for a node whose children are the layer indices
    tensors: int = 0
    params: int = 0
    nbytes: int = 0
    dtypes: Counter = field(default_factory=Counter)
    adapted: int = 0  # tensors the adapter changes
    mismatches: int = 0

    def walk(self) -> Iterable[Node]:
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True)
class Exploration:
    """Everything the app shows, read once from headers (and check's diagnosis with an adapter)."""

    title: str
    base: Checkpoint
    entries: tuple[Entry, ...]
    diagnosis: Diagnosis | None = None

    @property
    def adapter(self) -> Checkpoint | None:
        return self.diagnosis.adapter.checkpoint if self.diagnosis else None

    def source(self, side: Side) -> Checkpoint:
        """The checkpoint whose files hold a tensor of this side (an adapter opened alone is ``base``)."""
        return self.adapter if side == "adapter" and self.adapter is not None else self.base

    @property
    def findings(self) -> tuple[Finding, ...]:
        return self.diagnosis.findings if self.diagnosis else ()

    def entry_for(self, finding: Finding) -> Entry | None:
        """The tensor a finding names (its base tensor, else its adapter key), for the jump from the findings panel."""
        wanted = [n for n in (finding.tensor, finding.adapter_key) if n]
        for name in wanted:
            for entry in self.entries:
                if name in entry.keys:
                    return entry
        return None

    def tree(self, sort: str = "name", match: Callable[[str], bool] | None = None) -> Node:
        """The module tree, sorted by "name" (layer indices in numeric order) or "size" (largest first);
        ``match``: keep only tensors one of whose names it accepts (the base tensor's, its adapter keys)."""
        entries = [e for e in self.entries if match is None or any(match(k) for k in e.keys)]
        return build_tree(entries, sort)


# ---- the tree ----------------------------------------------------------------------------------


def build_tree(entries: Iterable[Entry], sort: str = "name") -> Node:
    root = Node("")
    for entry in entries:
        node = root
        for part in entry.path:
            node = next((c for c in node.children if c.label == part and c.entry is None), None) or _child(node, part)
        if node.entry is not None or node.children:  # a name that is also a prefix of others ("a" and "a.b"): its own leaf
            node = _child(node, "")
        node.entry = entry
    for child in root.children:
        _compress(child)
    _name(root, "")
    _totals(root)
    _label_groups(root)
    _sort(root, sort)
    return root


def _child(node: Node, label: str) -> Node:
    child = Node(label)
    node.children.append(child)
    return child


def _compress(node: Node) -> None:
    """Chains of single children become one node ("embed_tokens" > "weight" -> "embed_tokens.weight")."""
    # A layer index stays a level of its own (layers > 0 > self_attn, never "0.self_attn"): the groups need it.
    while node.entry is None and len(node.children) == 1 and node.label != ADAPTER_ONLY and not _DIGITS.fullmatch(node.label):
        only = node.children[0]
        node.label = f"{node.label}.{only.label}" if only.label else node.label
        node.entry, node.children = only.entry, only.children
    for child in node.children:
        _compress(child)


def _name(node: Node, prefix: str) -> None:
    for child in node.children:
        child.name = ADAPTER_ONLY if child.label == ADAPTER_ONLY else ".".join(p for p in (prefix, child.label) if p)
        _name(child, "" if child.label == ADAPTER_ONLY else child.name)


def _totals(node: Node) -> None:
    if node.entry is not None:
        e = node.entry
        node.tensors, node.params, node.nbytes = 1, e.info.numel, e.info.nbytes
        node.dtypes = Counter({e.info.dtype: 1})
        node.adapted, node.mismatches = int(bool(e.effects)), int(e.mismatch)
    for child in node.children:
        _totals(child)
        node.tensors += child.tensors
        node.params += child.params
        node.nbytes += child.nbytes
        node.dtypes += child.dtypes
        node.adapted += child.adapted
        node.mismatches += child.mismatches


def _label_groups(node: Node) -> None:
    """A module whose children are all layer indices (``model.layers`` > 0..79) is one group,
    labelled ``layers.{0..79}``."""
    indices = [c.label for c in node.children]
    if len(indices) >= 2 and all(_DIGITS.fullmatch(i) for i in indices):
        numbers = sorted(int(i) for i in indices)
        lo, hi = numbers[0], numbers[-1]
        span = f"{lo}..{hi}" if hi - lo + 1 == len(numbers) else f"{len(numbers)} of {lo}..{hi}"
        node.group = f"{len(numbers)} layers"
        node.label = f"{node.label}.{{{span}}}"
        node.name = f"{node.name}.{{{span}}}"  # children's names were taken before: model.layers.1
    for child in node.children:
        _label_groups(child)


def natural_key(label: str) -> tuple:
    """Layer indices in numeric order: layers.2 before layers.10."""
    return tuple((0, int(p), "") if p.isdigit() and len(p) <= 18 else (1, 0, p) for p in re.split(r"(\d+)", label) if p)


def _sort(node: Node, sort: str) -> None:
    if sort == "size":
        node.children.sort(key=lambda c: (-c.nbytes, natural_key(c.label)))
    else:
        node.children.sort(key=lambda c: natural_key(c.label))
    for child in node.children:
        _sort(child, sort)


# ---- building the entries ----------------------------------------------------------------------


def open_exploration(path: str, adapter_path: str | None = None) -> Exploration:
    """Read PATH (and ADAPTER, bound to it by check's own steps) from headers: no tensor data, no torch."""
    if adapter_path is None:
        ckpt = read_checkpoint(path)
        if ckpt.kind == "adapter":
            read_adapter(ckpt)  # a broken adapter_config.json is the same Error/Hint check gives
        return Exploration(path, ckpt, tuple(Entry(tuple(t.name.split(".")), t, "adapter" if ckpt.kind == "adapter" else "base") for t in ckpt.tensors))
    from inspector.check import run_check

    try:
        diagnosis = run_check(path, adapter_path)
    except UsageError as exc:
        if exc.what == "Arguments swapped":  # check's hint names check; the command to run is this one
            exc.hint = f"Run `{shell_command('lora-inspector', 'explore', adapter_path, path)}`."
        raise
    return Exploration(f"{path} + {adapter_path}", diagnosis.base, entries_of(diagnosis), diagnosis)


def entries_of(d: Diagnosis) -> tuple[Entry, ...]:
    """One entry per base tensor with the adapter's effects on it, plus the adapter's tensors that touch none."""
    b = d.binding
    effects: dict[str, list[Effect]] = {}
    alone: list[tuple[TensorInfo, str, str]] = []  # (adapter tensor, the name it targets, why alone)
    for module, (lm, weight) in b.lora_targets.items():
        parts = [t.info for t in (lm.A, lm.B, lm.B_bias, lm.magnitude) if t is not None]
        if weight is None:
            if b.config.target_parameters and b.wraps_target_parameter(module):
                alone += [(t, f"{module}.weight", "LoRA on a raw parameter (target_parameters, LI1403)") for t in parts]
            continue
        effects.setdefault(weight.name, []).append(Effect("LoRA delta", tuple(parts), _lora_summary(b, module, lm), rank=b.config.rank_for(module)))
    for full in b.adapter.full.values():
        if full.chosen.copy == "original_module":
            continue
        name = b.resolve(full.target)
        if name is None:
            continue
        base, copy = b.base.by_name[name].shape, full.chosen.info.shape
        # "grown" is a vocabulary word: a classifier head saved for more labels (LI405) is replaced, in red.
        grown = b.vocab.is_vocab(name) and len(copy) == len(base) and copy != base and copy[0] > base[0] and copy[1:] == base[1:]
        summary = f"{base[0]} -> {copy[0]} rows: the adapter's copy" if grown else f"by the adapter's copy ({full.chosen.copy})"
        effects.setdefault(name, []).append(Effect("grown" if grown else "replaced", (full.chosen.info,), summary, copy))
    for module, delta in b.adapter.trainable_tokens.items():
        weight = b.token_embedding_for.get(module)
        if weight is not None:
            effects.setdefault(weight.name, []).append(Effect("trainable tokens", (delta.info,), f"{delta.info.shape[0] if delta.info.shape else 0} rows replaced by trained ones"))
    target = b.target
    if target.grows and target.rows is not None:
        for name in (*b.vocab.matrices, *b.vocab.biases):
            if name in target.carried or name not in b.base.by_name:
                continue
            shape = b.base.by_name[name].shape
            new = (*shape[:-1], target.rows) if name in b.vocab.biases else (target.rows, *shape[1:])
            effects.setdefault(name, []).append(Effect("grown", (), f"{target.base_rows} -> {target.rows} rows: new rows from merge --init", new))
    for target_name, info in b.orphans:
        alone.append((info, target_name, "matches no base tensor (LI401)"))
    alone += [(f.chosen.info, f.target, "a new task head the base lacks (LI405)") for f in b.new_heads]
    alone += [(t.info, t.info.name, "a key no PEFT layout explains") for t in b.adapter.unknown]

    out = [Entry(tuple(t.name.split(".")), t, "base", tuple(effects.get(t.name, ())), ()) for t in b.base.tensors]
    # Under their own keys (two orphans may target one name), without PEFT's prefix.
    out += [Entry((ADAPTER_ONLY, *info.name.removeprefix("base_model.model.").split(".")), info, "adapter", (), (), why) for info, _target, why in alone]
    return tuple(_with_findings(out, d.findings))


def _with_findings(entries: list[Entry], findings: Iterable[Finding]) -> list[Entry]:
    named: dict[int, list[Finding]] = {}
    index = {key: i for i, e in enumerate(entries) for key in reversed(e.keys)}
    for f in findings:
        for name in (f.tensor, f.adapter_key):
            if name in index:
                named.setdefault(index[name], []).append(f)
                break
    return [Entry(e.path, e.info, e.side, e.effects, tuple(named.get(i, ())), e.note) for i, e in enumerate(entries)]


def _lora_summary(b: Binding, module: str, lm) -> str:
    r, alpha = b.config.rank_for(module), b.config.alpha_for(module)
    words = [f"r={r}, alpha={alpha:g}, scale {b.config.scale_for(module):g}"]
    if lm.embedding:
        words.append("embedding LoRA")
    if lm.magnitude is not None:
        words.append("DoRA")
    if lm.B_bias is not None:
        words.append("lora_bias")
    return "; ".join(words)


# ---- what the detail panel says of a tensor ---------------------------------------------------------


@dataclass(frozen=True)
class Row:
    label: str
    base: str
    adapter: str
    mismatch: bool = False


def side_by_side(entry: Entry) -> list[Row]:
    """The base tensor and what the adapter puts against it, row by row (the detail panel's table;
    each effect's summary is a line of its own under it)."""
    info = entry.info
    own = [("shape", shape_str(info.shape)), ("dtype", info.dtype), ("bytes", human_bytes(info.nbytes))]
    if entry.side == "adapter":
        return [Row(label, "-", value) for label, value in own]
    rows = [Row(label, value, "") for label, value in own]
    if not entry.effects:
        return rows
    shape, dtype = rows[0], rows[1]
    extra: list[Row] = []
    for e in entry.effects:
        if e.kind == "LoRA delta":
            extra += [Row(_role(t), "", f"{shape_str(t.shape)} {t.dtype}") for t in e.tensors]
        elif e.shape is not None:  # a copy or a growth: the tensor's new shape (and the copy's dtype)
            shape = Row("shape", shape.base, shape_str(e.shape), e.shape != info.shape)
            if e.tensors:
                dtype = Row("dtype", info.dtype, e.tensors[0].dtype)  # a dtype difference is LI1101's info, not a mismatch
        else:
            extra += [Row("delta", "", f"{shape_str(t.shape)} {t.dtype}") for t in e.tensors]
    adapter_bytes = sum(t.nbytes for e in entry.effects for t in e.tensors)
    return [shape, dtype, *extra, Row("bytes", human_bytes(info.nbytes), human_bytes(adapter_bytes) if adapter_bytes else "")]


_ROLES = ("lora_embedding_A", "lora_embedding_B", "lora_A", "lora_B", "lora_magnitude_vector", "trainable_tokens_delta")


def role(name: str) -> str | None:
    """What an adapter tensor is to its module (lora_A, lora_B.bias, lora_magnitude, ...); None for a
    full copy (modules_to_save) or a key no PEFT layout explains."""
    for r in _ROLES:
        if f".{r}" in name:
            return "lora_B.bias" if r == "lora_B" and name.endswith(".bias") else r.removesuffix("_vector")
    return None


def _role(info: TensorInfo) -> str:
    return role(info.name) or "tensor"
