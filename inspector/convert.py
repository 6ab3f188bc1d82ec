"""``convert ADAPTER --for NAME``: the lossless repairs that make an adapter servable unmerged, and only those.

The server's rules (inspector/targets/, as ``check --target`` runs them) say what is wrong; convert
repairs what can be repaired without changing what PEFT computes:

- fold: a server that scales every module by lora_alpha / r computes PEFT's rsLoRA (alpha / sqrt(r))
  or per-module (rank_pattern / alpha_pattern) scale when lora_B carries the ratio; the config is
  written without them, and modules of a smaller rank are zero-padded to one r (PEFT builds every
  module at the config's r once rank_pattern is gone; the padded rows and columns add exact zeros);
- drop: frozen copies a served adapter does not need: ``original_module`` (the pre-training copy PEFT
  only uses with the adapter disabled) and ``base_layer`` copies equal to the base's tensor;
- rename: keys a hand-written save named with the adapter (``.lora_A.default.weight``) to the layout
  PEFT's save_pretrained writes (``.lora_A.weight``);
- cast: ``--dtype``.

The rules are then run again on what the converted adapter would be: whatever the server still
refuses or computes differently (DoRA, lora_bias, trainable tokens, full weights, a grown
vocabulary, embedding LoRA, ...) cannot be converted, and the fix is a merge (exit 1, nothing
written). What needs only a server flag is converted and reported with the flag. Output through the
same safe writer as merge (staging, verify, atomic publish).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from inspector import interrupts
from inspector.adapter import PREFIX, AdapterTensor, Role
from inspector.binding import Binding, shell_command
from inspector.diagnose import Diagnosis
from inspector.errors import RefusedError, UsageError
from inspector.findings import Code, Finding
from inspector.io.tensor import FLOAT_DTYPES, STREAM_BLOCK_BYTES, TensorInfo
from inspector.targets import TARGETS, Target
from inspector.targets.facts import AdapterFacts

ADAPTER_FILE = "adapter_model.safetensors"  # what PEFT's from_pretrained loads
DTYPES = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}
Progress = Callable[[int, int], None]  # (bytes done now, total bytes)

# The key suffix PEFT's save_pretrained writes for each role (no adapter name).
CANONICAL: dict[Role, str] = {
    "lora_A": ".lora_A.weight",
    "lora_B": ".lora_B.weight",
    "lora_B_bias": ".lora_B.bias",
    "lora_embedding_A": ".lora_embedding_A",
    "lora_embedding_B": ".lora_embedding_B",
    "magnitude": ".lora_magnitude_vector",
    "trainable_tokens": ".token_adapter.trainable_tokens_delta",
}
_RANK_AXIS: dict[Role, int] = {"lora_A": 0, "lora_embedding_A": 0, "lora_B": 1, "lora_embedding_B": 1}  # where r is in the shape
_SCALED: tuple[Role, ...] = ("lora_B", "lora_embedding_B", "lora_B_bias")  # PEFT scales lora_B's output, bias included


@dataclass(frozen=True)
class Job:
    """One output tensor: an adapter tensor, renamed, scaled, padded and cast as the plan says."""

    name: str
    source: TensorInfo
    dtype: str
    shape: tuple[int, ...]
    factor: float = 1.0  # the scale folded into lora_B (and its bias)
    pad_axis: int | None = None  # the rank axis, zero-padded to shape[pad_axis]

    @property
    def computed(self) -> bool:
        return self.factor != 1.0 or self.pad_axis is not None


@dataclass(frozen=True)
class Repair:
    kind: str  # "fold" | "pad" | "drop" | "rename" | "cast"
    message: str
    keys: tuple[str, ...]  # the adapter keys it touched


@dataclass(frozen=True)
class Fold:
    r: int  # the config's r after the fold (the largest stored rank when rank_pattern set ranks)
    lora_alpha: float
    factors: dict[str, float]  # module -> PEFT's scale / (lora_alpha / r)
    ranks: dict[str, int]  # module -> its stored rank


@dataclass(frozen=True)
class ConvertPlan:
    diagnosis: Diagnosis  # check --target NAME on the adapter as it is
    target: str
    base_from: str  # "--base" or "base_model_name_or_path"
    dtype: str
    jobs: tuple[Job, ...]
    config: dict  # the adapter_config.json written
    repairs: tuple[Repair, ...]
    repaired: tuple[Finding, ...]  # the target's findings on the input that the converted adapter no longer has
    flags: tuple[Finding, ...]  # what the server still needs on the converted adapter: a flag (warnings)
    notes: tuple[str, ...]

    @property
    def title(self) -> str:
        return TARGETS[self.target].title

    @property
    def config_changes(self) -> dict[str, list]:
        """adapter_config.json fields the conversion changed: field -> [before, after]."""
        before = self.diagnosis.adapter.checkpoint.config
        return {k: [before.get(k), v] for k, v in self.config.items() if before.get(k) != v}

    @property
    def warnings(self) -> tuple[Finding, ...]:
        """check's own warnings on the input (the server's are ``flags``, on the output)."""
        return tuple(f for f in self.diagnosis.findings if f.severity == "warning" and f.target is None)


@dataclass
class ConvertResult:
    out: Path
    plan: ConvertPlan
    stats: dict[str, int]
    tokenizer_from: str | None  # None: the adapter directory had no tokenizer files


# -- which base --------------------------------------------------------------------------------


def base_for(adapter_path: str, base: str | None) -> tuple[str, str]:
    """(the base to check against, where it came from). The serving rules for architectures,
    embedding LoRA and the vocabulary read the base, and a base_layer copy is dropped only when it
    equals the base's tensor: without --base, the adapter's base_model_name_or_path when that is a
    local model directory, else a usage error."""
    if base is not None:
        return base, "--base"
    from inspector.io.checkpoint import read_checkpoint

    named = read_checkpoint(adapter_path).config.get("base_model_name_or_path")
    if isinstance(named, str) and named and (Path(named) / "config.json").is_file():
        return named, "base_model_name_or_path"
    why = f"its base_model_name_or_path {named!r} is not a local model directory" if isinstance(named, str) and named else "it names no base_model_name_or_path"
    raise UsageError("convert needs the base model", adapter_path, why,
                     "Pass the base with --base DIR (only its config.json and tensor headers are read, and any base_layer copy the adapter carries).")


# -- the plan ----------------------------------------------------------------------------------


def _rule_findings(target: Target, facts: AdapterFacts, b: Binding, adapter: str) -> list[Finding]:
    """The target's rules on ``facts``, worded as check --target words them (inspector/checks/serving.py)."""
    found = []
    for rule in target.rules:
        values = rule.when(facts)
        if values is not None:
            found.append(Finding(rule.code, f"{target.title}: {rule.message.format(**values)}", rule.fix.format(**values, base=b.base.path, adapter=adapter),
                                 severity=rule.severity, target=target.name, outcome=rule.outcome))  # fmt: skip
    return found


# check's errors about what a merge would do to the base, not about the adapter: a quantized base
# is what adapters are commonly served on, and convert leaves the base alone.
MERGE_ONLY = frozenset({Code.QUANTIZED_BASE})


def _refuse_check_errors(d: Diagnosis, title: str) -> None:
    """check's own errors (not the server's): an adapter PEFT itself cannot load as it is, or whose
    vocabulary differs from the base's, is not converted."""
    errors = [f for f in d.findings if f.severity == "error" and not f.code.code.startswith("LI15") and f.code not in MERGE_ONLY]
    if not errors:
        return
    codes = ", ".join(dict.fromkeys(f"{f.code.code} {f.code.slug}" for f in errors))
    b = d.binding
    if all(f.repair for f in errors):  # a vocabulary the merge grows: the merged model serves it
        hint = f"Serve a merged model instead: `{b.merge_cmd}`. Nothing was written."
    else:
        hint = f"Run `{shell_command('lora-inspector', 'check', b.base.path, b.adapter.checkpoint.path)}` for each error and its fix. Nothing was written."
    raise RefusedError("Cannot convert adapter", b.adapter.checkpoint.path, f"check finds errors convert does not repair: {codes} ({errors[0].message.rstrip('.')})", hint)


def _refuse_blockers(found: list[Finding], b: Binding, title: str) -> None:
    blockers = [f for f in found if f.outcome in ("refused", "diverges")]
    if blockers:
        what = "; ".join(f.message.rstrip(".") for f in blockers)  # each "<title>: <what the server does>"
        raise RefusedError("Cannot convert adapter", b.adapter.checkpoint.path, f"{what}; no lossless repair makes it servable by {title} unmerged",
                           f"Serve a merged model instead: `{b.merge_cmd}` (it computes exactly what PEFT computes). Nothing was written.")  # fmt: skip


def plan_fold(d: Diagnosis, target: Target) -> Fold | None:
    """The fold, when the target computes the adapter's scaling otherwise (an LI1510 rule fires)."""
    b, c = d.binding, d.binding.config
    if not any(r.code is Code.SERVE_SCALING and r.when(b.serving_facts) is not None for r in target.rules):
        return None
    ranks = {m: lm.A.info.shape[0] for m, lm in d.adapter.lora.items() if lm.A is not None and lm.B is not None}
    r = max(ranks.values(), default=c.r) if c.rank_pattern else c.r
    alpha = c.lora_alpha if c.lora_alpha else r  # alpha 0 scales nothing: keep a scale to fold per-module alphas into
    return Fold(r, alpha, {m: c.scale_for(m) / (alpha / r) for m in ranks}, ranks)


def _droppable(d: Diagnosis) -> tuple[list[AdapterTensor], list[str]]:
    """(frozen copies to drop, notes): every original_module copy, and base_layer copies whose
    values equal the base tensor's (PEFT loads a base_layer key into the base weight: a copy that
    differs, a resized or trained embedding, is what the adapter computes with)."""
    b = d.binding
    frozen = [cp for f in d.adapter.full.values() for cp in f.copies if cp.copy in ("original_module", "base_layer")]
    drop = [cp for cp in frozen if cp.copy == "original_module"]
    kept = []
    for cp in frozen:
        if cp.copy == "base_layer":
            base = b.tensor(cp.target)
            (drop if base is not None and _same_values(d, cp.info, base) else kept).append(cp)
    notes = [f"{cp.key} differs from the base's tensor: PEFT loads it in place of the base weight, so it is kept" for cp in kept]
    return drop, notes


def _same_values(d: Diagnosis, a: TensorInfo, base: TensorInfo) -> bool:
    """Bit-for-bit the same numbers (compared in fp64, exact for every float dtype), in row blocks."""
    import torch

    from inspector.io.loader import TensorReader

    if tuple(a.shape) != tuple(base.shape) or a.dtype not in FLOAT_DTYPES or base.dtype not in FLOAT_DTYPES:
        return False
    rows = a.shape[0] if a.shape else 1
    step = max(1, STREAM_BLOCK_BYTES // (8 * max(1, math.prod(a.shape[1:]))))
    with TensorReader(d.adapter.checkpoint.root, d.adapter.checkpoint.stamps) as ra, TensorReader(d.base.root, d.base.stamps) as rb:
        for r0 in range(0, rows, step):
            x, y = ra.read_rows(a, r0, r0 + step), rb.read_rows(base, r0, r0 + step)
            if not torch.equal(x.to(torch.float64), y.to(torch.float64)):
                return False
    return True


def canonical_key(t: AdapterTensor) -> str:
    """The key PEFT's save_pretrained writes for ``t`` (full tensors keep theirs)."""
    if t.role in CANONICAL and t.prefixed:
        return PREFIX + t.module + CANONICAL[t.role]
    return t.key


def _job(t: AdapterTensor, fold: Fold | None, dtype: str) -> Job:
    out_dtype = DTYPES[dtype] if dtype != "auto" and t.info.dtype in FLOAT_DTYPES else t.info.dtype
    shape, factor, axis = tuple(t.info.shape), 1.0, None
    if fold is not None and t.module in fold.ranks:
        if t.role in _SCALED:
            factor = fold.factors[t.module]
        if t.role in _RANK_AXIS and fold.ranks[t.module] != fold.r:
            axis = _RANK_AXIS[t.role]
            shape = tuple(fold.r if i == axis else n for i, n in enumerate(shape))
    return Job(canonical_key(t), t.info, out_dtype, shape, factor, axis)


def _converted_facts(facts: AdapterFacts, fold: Fold | None, dropped: list[AdapterTensor]) -> AdapterFacts:
    """What the target's rules will see in the converted adapter."""
    gone = {cp.key for cp in dropped}
    after = dataclasses.replace(facts, frozen_copies=tuple(k for k in facts.frozen_copies if k not in gone))
    if fold is not None:
        after = dataclasses.replace(after, r=fold.r, use_rslora=False, patterns=(), max_rank=max(fold.ranks.values(), default=fold.r))
    return after


def _config(d: Diagnosis, fold: Fold | None) -> dict:
    config = dict(d.adapter.checkpoint.config)
    if fold is not None:
        config.update(use_rslora=False, rank_pattern={}, alpha_pattern={}, r=fold.r, lora_alpha=fold.lora_alpha)
    return config


def plan_convert(d: Diagnosis, target: str, *, dtype: str = "auto", base_from: str = "--base", out: str = "converted") -> ConvertPlan:
    """Refuse (RefusedError, nothing written) or plan every output tensor; reads no tensor but the
    base_layer copies it compares with the base."""
    t, b = TARGETS[target], d.binding
    _refuse_check_errors(d, t.title)
    fold = plan_fold(d, t)
    # Refused whatever the copies hold: said before reading any of them.
    _refuse_blockers(_rule_findings(t, _converted_facts(b.serving_facts, fold, [cp for f in d.adapter.full.values() for cp in f.copies]), b, out), b, t.title)
    dropped, notes = _droppable(d)
    after = _rule_findings(t, _converted_facts(b.serving_facts, fold, dropped), b, out)
    _refuse_blockers(after, b, t.title)
    gone = {cp.key for cp in dropped}
    jobs = tuple(_job(x, fold, dtype) for x in d.adapter.tensors if x.key not in gone)
    if len({j.name for j in jobs}) != len(jobs):
        raise RefusedError("Cannot convert adapter", b.adapter.checkpoint.path, "it stores a LoRA tensor under two names (with and without the adapter name)",
                           "Keep one of the two keys (PEFT loads both into the same parameter). Nothing was written.")  # fmt: skip
    still = {(f.code, f.message) for f in after}
    repaired = tuple(f for f in d.findings if f.target == target and (f.code, f.message) not in still)
    notes += _rounding_notes(jobs)
    return ConvertPlan(d, target, base_from, dtype, jobs, _config(d, fold), tuple(_repairs(d, t, fold, dropped, jobs)), repaired,
                       tuple(f for f in after if f.outcome == "flag"), tuple(notes))  # fmt: skip


def _rounding_notes(jobs: tuple[Job, ...]) -> list[str]:
    """A fold by a factor that is not a power of two rounds lora_B in a 16-bit dtype."""
    rounded = [j for j in jobs if j.factor != 1.0 and j.dtype in ("BF16", "F16") and math.frexp(abs(j.factor))[0] != 0.5]
    if not rounded:
        return []
    bits = 8 if rounded[0].dtype == "BF16" else 11  # round to nearest: half the spacing of 7 and 10 fraction bits
    what = _count(len(rounded), "scaled lora_B tensor is", "scaled lora_B tensors are")
    return [f"{what} rounded to {rounded[0].dtype} (relative error up to 2^-{bits}); --dtype fp32 keeps the fold exact"]


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _repairs(d: Diagnosis, t: Target, fold: Fold | None, dropped: list[AdapterTensor], jobs: tuple[Job, ...]) -> list[Repair]:
    c, out = d.binding.config, []
    if fold is not None:
        how = "alpha / sqrt(r) (use_rslora)" if c.use_rslora else "per-module r and alpha (rank_pattern / alpha_pattern)"
        lo, hi = min(fold.factors.values(), default=1.0), max(fold.factors.values(), default=1.0)
        times = f"x{lo:.4g}" if math.isclose(lo, hi) else f"x{lo:.4g} to x{hi:.4g}"
        out.append(Repair("fold", f"{t.title} scales every module by lora_alpha / r: PEFT's {how} folded into lora_B of {_count(len(fold.factors), 'module', 'modules')} ({times}); "
                          f"config: r {fold.r}, lora_alpha {fold.lora_alpha:g}, use_rslora false, no rank_pattern / alpha_pattern",
                          tuple(j.source.name for j in jobs if j.factor != 1.0)))  # fmt: skip
        padded = [j for j in jobs if j.pad_axis is not None]
        if padded:
            out.append(Repair("pad", f"{_count(len(padded) // 2, 'module', 'modules')} of a smaller rank zero-padded to r {fold.r} (PEFT builds every module at r without rank_pattern; "
                              "the zeros add nothing)", tuple(j.source.name for j in padded)))  # fmt: skip
    if dropped:
        out.append(Repair("drop", f"{_count(len(dropped), 'frozen copy', 'frozen copies')} dropped (original_module, and base_layer copies equal to the base's tensor): "
                          "no server needs them", tuple(cp.key for cp in dropped)))  # fmt: skip
    renamed = [j for j in jobs if j.name != j.source.name]
    if renamed:
        out.append(Repair("rename", f"{_count(len(renamed), 'key', 'keys')} renamed to PEFT's saved layout, e.g. {renamed[0].source.name} -> {renamed[0].name}",
                          tuple(j.source.name for j in renamed)))  # fmt: skip
    cast = [j for j in jobs if j.dtype != j.source.dtype]
    if cast:
        out.append(Repair("cast", f"{_count(len(cast), 'tensor', 'tensors')} cast to {cast[0].dtype}", tuple(j.source.name for j in cast)))
    return out


# -- execution ---------------------------------------------------------------------------------


def _finite(t, job: Job, fp32=None) -> None:
    """Refuse NaN/Inf in a converted tensor; ``fp32``, the values before the cast, tells an overflow
    of the output dtype (fp16 tops out at 65504) from NaN/Inf that came with the adapter."""
    import torch

    if not t.is_floating_point() or bool(torch.isfinite(t).all()):
        return
    if fp32 is not None and bool(torch.isfinite(fp32).all()):
        raise RefusedError("Refusing to write an overflowed result", job.source.name, f"values up to {float(fp32.abs().max()):.4g} do not fit {job.dtype}",
                           "Write a wider dtype: --dtype bf16 or fp32 (or leave --dtype auto); nothing was written.")  # fmt: skip
    raise RefusedError("Refusing to write a non-finite result", job.source.name, "the adapter tensor contains NaN or Inf",
                       "Check the adapter (`lora-inspector diff --values` against another save of it); nothing was written.")  # fmt: skip


def _computed(job: Job, reader):
    """A LoRA tensor scaled and/or padded, in fp32, then cast: small (rank x width), read whole."""
    import torch

    from inspector.io.loader import torch_dtype

    t = reader.read(job.source).to(torch.float32) * job.factor
    if job.pad_axis is not None:
        padded = torch.zeros(job.shape, dtype=torch.float32)
        padded.narrow(job.pad_axis, 0, t.shape[job.pad_axis]).copy_(t)
        t = padded
    out = t.to(torch_dtype(job.dtype))
    _finite(out, job, t)
    return out


def _copied(job: Job, reader):
    """A tensor as stored (or cast), in row blocks: a full weight may be large."""
    from inspector.io.loader import torch_dtype

    dtype = torch_dtype(job.dtype)
    step = max(1, STREAM_BLOCK_BYTES // (4 * max(1, math.prod(job.shape[1:]))))
    for r0 in range(0, job.shape[0], step):
        block = reader.read_rows(job.source, r0, r0 + step)
        out = block.to(dtype)
        _finite(out, job, block)
        yield out


def execute(plan: ConvertPlan, out: str, *, force: bool = False, progress: Progress | None = None) -> ConvertResult:
    """Stream every job through the writer into adapter_model.safetensors; the config and the
    adapter directory's side files (tokenizer, chat templates, model card) alongside."""
    from inspector.io.loader import TensorReader
    from inspector.io.shards import OutputTensor
    from inspector.io.sidefiles import (
        copy_side,
        output_side_files,
        output_side_folders,
        side_bytes,
        tokenizer_from,
    )
    from inspector.io.writer import CheckpointWriter

    d = plan.diagnosis
    ckpt = d.adapter.checkpoint
    extras = [p for p in output_side_files(ckpt.root, ckpt.root) if p.name != "adapter_config.json"]  # written anew
    folders = output_side_folders(ckpt.root, ckpt.root)
    planned = [OutputTensor(j.name, j.dtype, j.shape) for j in plan.jobs]
    total = sum(j.source.nbytes for j in plan.jobs)
    with CheckpointWriter(out, inputs=[ckpt.root, d.base.root], tensors=planned, force=force, extra_bytes=side_bytes(extras, folders),
                          stamps=ckpt.stamps + d.base.stamps, single_file=ADAPTER_FILE) as writer:  # fmt: skip
        with TensorReader(ckpt.root, ckpt.stamps) as reader:
            for job in plan.jobs:
                if job.computed or len(job.shape) < 2:
                    writer.write(job.name, _computed(job, reader) if job.computed else _whole(job, reader))
                else:
                    writer.write_rows(job.name, _copied(job, reader))
                if progress:
                    progress(job.source.nbytes, total)
        writer.add_file("adapter_config.json", json.dumps(plan.config, indent=2, sort_keys=True) + "\n")  # as PEFT writes it
        copy_side(writer, extras, folders)
        writer.commit()
    return ConvertResult(Path(out), plan, _stats(plan), tokenizer_from(extras, ckpt.root))


def _whole(job: Job, reader):
    from inspector.io.loader import torch_dtype

    t = reader.read(job.source)
    out = t.to(torch_dtype(job.dtype))
    _finite(out, job, t)
    return out


def _stats(plan: ConvertPlan) -> dict[str, int]:
    done = {r.kind: len(r.keys) for r in plan.repairs}
    return {"tensors": len(plan.jobs), "folded": done.get("fold", 0), "padded": done.get("pad", 0), "dropped": done.get("drop", 0),
            "renamed": done.get("rename", 0), "cast": done.get("cast", 0)}  # fmt: skip


def convert_adapter(adapter: str, out: str, *, target: str, base: str | None = None, dtype: str = "auto", force: bool = False,
                    progress: Progress | None = None) -> ConvertResult:
    """check --target -> plan (refuse what only a merge can serve) -> stream."""
    from inspector.check import run_check
    from inspector.io.checkpoint import read_checkpoint
    from inspector.merge import _sleeping_omp_waiters

    if target not in TARGETS:
        raise UsageError("Invalid --for", None, f"{target!r} is no server lora-inspector knows", f"Use --for {'|'.join(TARGETS)}.")
    if dtype not in ("auto", *DTYPES):
        raise UsageError("Invalid --dtype", None, f"{dtype!r} is not auto, bf16, fp16 or fp32", "Use --dtype auto|bf16|fp16|fp32.")
    base_path, base_from = base_for(adapter, base)
    base_ckpt = read_checkpoint(base_path)
    if base_ckpt.kind == "adapter":
        raise UsageError("Not a base model", base_ckpt.path, "--base is a PEFT adapter, not a model checkpoint", "Pass the base model directory with --base and the adapter as ADAPTER.")
    _sleeping_omp_waiters()
    interrupts.heavy_import("torch")  # stop signals held while it loads (see inspector/interrupts.py); the plan may compare copies
    d = run_check(base_ckpt, adapter, command="convert", targets=(target,))
    plan = plan_convert(d, target, dtype=dtype, base_from=base_from, out=out)
    return execute(plan, out, force=force, progress=progress)
