"""``merge``: stream BASE + ADAPTER into a merged model equal to PEFT's ``merge_and_unload``.

The plan comes from ``check`` (headers only): refuse what cannot be repaired, grow the vocabulary
to the size the adapter implies, and turn every adapter tensor into work on one output tensor.
Execution reads one row block at a time, computes in fp32 on the device, casts back, checks that
the result is finite and hands it to the shared writer: peak memory is one tensor's block (the
vocabulary growth statistics aside), never the model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from inspector import interrupts
from inspector.adapter import is_transposed
from inspector.base import known_tied_head
from inspector.check import run_check
from inspector.diagnose import Diagnosis
from inspector.errors import InvalidInputError, RefusedError, UsageError
from inspector.findings import Code
from inspector.loader import TensorReader
from inspector.repair import ResizePlan, draw_rules, initializer_range
from inspector.resize import copy_side, grow, output_side_files, output_side_folders, side_bytes, tokenizer_from, updated_config
from inspector.tensor import FLOAT_DTYPES, STREAM_BLOCK_BYTES, TensorInfo
from inspector.writer import CheckpointWriter, OutputTensor

CHUNK_BYTES = STREAM_BLOCK_BYTES  # fp32 bytes of one row block (check's memory plan uses the same)
DTYPES = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}
Progress = Callable[[int, int], None]  # (bytes done now, total bytes)


@dataclass(frozen=True)
class Delta:
    """One LoRA contribution to a 2-D weight: W += scale * B @ A (transposed: (B @ A).T)."""

    module: str
    A: TensorInfo
    B: TensorInfo
    scale: float
    transposed: bool  # Conv1D ([in, out] storage) and Embedding LoRA
    magnitude: TensorInfo | None = None  # DoRA


@dataclass
class Job:
    """What the merge does to one output tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    source: TensorInfo  # the base tensor whose rows it starts from
    replace: TensorInfo | None = None  # a full copy from the adapter (modules_to_save / base_layer)
    deltas: list[Delta] = field(default_factory=list)
    bias_deltas: list[tuple[TensorInfo, float]] = field(default_factory=list)  # lora_bias: b += s * lora_B.bias
    tokens: list[tuple[tuple[int, ...], TensorInfo]] = field(default_factory=list)  # trainable tokens: rows replaced

    @property
    def unchanged(self) -> bool:
        return not (self.replace or self.deltas or self.bias_deltas or self.tokens) and self.shape == self.source.shape and self.dtype == self.source.dtype


@dataclass
class MergePlan:
    diagnosis: Diagnosis
    jobs: list[Job]
    config: dict
    head: str | None  # the untied head's weight name (a tied base whose sides now differ)
    init: str
    device: str
    vocab: ResizePlan | None  # the growth of vocabulary tensors nobody carries (resize's rules)

    @property
    def untied(self) -> bool:
        return self.head is not None

    @property
    def repaired(self) -> list:
        """check's errors the merge repairs itself (it grows the vocabulary)."""
        return [f for f in self.diagnosis.findings if f.severity == "error" and f.repair == "resize"]

    @property
    def accepted(self) -> list:
        """check's errors merged over only because --init was given: what training saw there is lost."""
        return [f for f in self.diagnosis.findings if f.severity == "error" and f.repair == "init"]


@dataclass
class MergeResult:
    out: Path
    plan: MergePlan
    stats: dict[str, int]
    tokenizer_from: str | None  # None: no input had tokenizer files


def _refuse_unrepairable(diagnosis: Diagnosis, init_explicit: bool) -> None:
    """Errors are repaired only where check says how (Finding.repair); the rest refuse the merge."""
    repairs = {"resize", "init"} if init_explicit else {"resize"}
    blocking = [f for f in diagnosis.findings if f.severity == "error" and f.repair not in repairs]
    if not blocking:
        return
    codes = sorted({f.code.code for f in blocking}, key=lambda c: int(c[2:]))
    first = next((f for f in blocking if f.code is Code.QUANTIZED_BASE), blocking[0])  # the cause, not its symptoms
    hint = (
        "What training saw for those rows is lost; merge anyway with an explicit --init (e.g. --init mean)."
        if all(f.repair == "init" for f in blocking)
        else f"Run `lora-inspector check {diagnosis.base.path} {diagnosis.adapter.checkpoint.path}` for every finding and its fix."
    )
    raise RefusedError("Merge refused", diagnosis.adapter.checkpoint.path, f"{len(blocking)} error finding(s) the merge cannot repair ({', '.join(codes)}): {first.message}", hint)


def resolve_device(device: str) -> str:
    import torch

    if device in ("auto", "cpu"):
        return "cuda" if device == "auto" and torch.cuda.is_available() else "cpu"
    cuda = re.fullmatch(r"cuda(?::(\d+))?", device)
    if cuda is None:
        raise UsageError("Invalid --device", None, f"{device!r} is not auto, cpu, cuda or cuda:N", "Use --device auto|cpu|cuda|cuda:N.")
    if not torch.cuda.is_available():
        raise UsageError("Cannot use --device", None, f"{device} was asked for but CUDA is not available", "Use --device cpu (or auto).")
    if cuda.group(1) is not None and int(cuda.group(1)) >= torch.cuda.device_count():
        raise UsageError("Cannot use --device", None, f"{device} does not exist ({torch.cuda.device_count()} CUDA devices)", "Use --device cuda:0 or auto.")
    return device


def _tied_head(diagnosis: Diagnosis) -> tuple[str, list[tuple[str, str]]]:
    """The name transformers gives the output layer that a tied base does not store, and the bias
    pairs (own, tied-to) transformers ties along with it. Known layouts from TIED_HEADS; others from
    transformers itself; ``lm_head`` when neither knows."""
    names = diagnosis.base.by_name
    known = known_tied_head(names)
    if known is not None:
        head, own, tied = known
        return head, [(own, tied)] if own and tied else []
    config = diagnosis.base.config
    archs = config.get("architectures") if isinstance(config.get("architectures"), list) else []
    if any(isinstance(a, str) and a.endswith("ForCausalLM") for a in archs) or "auto_map" in config:
        # Causal LMs (Llama-3.2, Qwen2.5, Gemma, ...) call it lm_head; remote-code models are never
        # built here (their config class is code from the checkpoint).
        return "lm_head.weight", []
    return _head_from_transformers(diagnosis.base.root, frozenset(names)) or ("lm_head.weight", [])


@functools.lru_cache(maxsize=4)
def _head_from_transformers(root: Path, names: frozenset[str]) -> tuple[str, list[tuple[str, str]]] | None:
    """Ask transformers where the base's architecture keeps its output layer: the class its config
    names, built on the meta device (no memory, no weights read). None when that fails (an
    architecture this transformers does not have, remote code, a config it rejects)."""
    import warnings

    try:
        # Held: transformers imports the architecture's modules lazily, here; a stop raised inside
        # an import can be swallowed by it (the run would go on) or break the module for good.
        with interrupts.held(), warnings.catch_warnings():
            import torch
            import transformers

            warnings.simplefilter("ignore")
            config = transformers.AutoConfig.from_pretrained(root, local_files_only=True, trust_remote_code=False)
            cls = getattr(transformers, (getattr(config, "architectures", None) or [""])[0], None)
            if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
                return None  # the name must be one of transformers' own model classes, nothing else it exports
            with torch.device("meta"):
                model = cls(config)
        out = model.get_output_embeddings()
        head = next((f"{name}.weight" for name, module in model.named_modules() if name and module is out), None)
    except Exception:  # noqa: BLE001 - any failure means "unknown": the caller falls back
        return None
    if head is None:
        return None
    # transformers 5 lists what it ties as {target: source}; a bias tied along with the head is
    # stored under its source name only.
    tied = getattr(cls, "_tied_weights_keys", None)
    biases = [(t, s) for t, s in tied.items() if t.endswith(".bias") and s in names] if isinstance(tied, dict) else []
    return head, biases


def _check_dtypes(jobs: list[Job], diagnosis: Diagnosis) -> None:
    """Every tensor the merge will read must have a torch dtype: refuse while planning, naming the file."""
    from inspector.loader import torch_dtype

    for job in jobs:
        for info, root in ((job.source, diagnosis.base.root), (job.replace, diagnosis.adapter.checkpoint.root)):
            if info is None:
                continue
            try:
                torch_dtype(info.dtype)
            except InvalidInputError as exc:
                raise InvalidInputError("Cannot load tensor", root / info.file, f"{info.name} is {info.dtype}, which has no torch dtype here", exc.hint) from exc


def plan_merge(diagnosis: Diagnosis, *, init: str | None, dtype: str = "auto", device: str = "cpu") -> MergePlan:
    """Turn a diagnosis into one job per output tensor; refuses (exit 1) what it cannot repair."""
    _refuse_unrepairable(diagnosis, init is not None)
    ctx, plan, adapter = diagnosis.binding, diagnosis.target, diagnosis.adapter
    vocab, cfg = ctx.vocab, adapter.config
    grows = plan.grows

    growth = ResizePlan(vocab.rows, plan.rows, plan.rows, plan.source, vocab.matrices, vocab.biases, init or "mean",
                        **draw_rules(vocab, diagnosis.base.config)) if grows else None

    def out_shape(info: TensorInfo) -> tuple[int, ...]:
        return growth.new_shape(info.shape, info.name) if growth and growth.touches(info.name) else info.shape

    def out_dtype(info: TensorInfo) -> str:
        return DTYPES[dtype] if dtype != "auto" and info.dtype in FLOAT_DTYPES else info.dtype

    jobs = {t.name: Job(t.name, out_shape(t), out_dtype(t), t) for t in diagnosis.base.tensors}
    embed = vocab.embeddings[0] if vocab.embeddings else None
    head: Job | None = None  # the untied head of a tied base, when the adapter makes the sides differ
    def trained(full) -> bool:
        """A modules_to_save replacement, as opposed to a copy of the base's own (possibly resized)
        layer that PEFT saves beside a LoRA layer (``base_layer``) or as an embedding layer (plain)."""
        module = full.target.rpartition(".")[0]
        return full.chosen.copy == "modules_to_save" or (full.chosen.copy == "plain" and cfg.saves(module))

    # The shared weight of a tied pair as PEFT saved it, grown rows included when the vocabulary was
    # resized: a saved layer copy of either side, or the frozen ``original_module`` beside a
    # modules_to_save copy. PEFT loads it into the shared parameter, so the side the adapter does
    # not replace starts from it (not from the base plus --init rows).
    shared: TensorInfo | None = None
    if vocab.tied and embed:
        pair = [f for f in adapter.full.values() if ctx.resolve(f.target) == embed]
        layers = [f.chosen.info for f in pair if f.chosen.copy != "original_module" and not trained(f)]
        frozen = [c.info for f in pair for c in f.copies if c.copy == "original_module"]
        shared = (layers + frozen or [None])[0]

    def head_job(target: str) -> Job:
        nonlocal head
        if head is None:
            src = jobs[embed].source
            head = Job(target, jobs[embed].shape, jobs[embed].dtype, src, replace=shared)
        return head

    aliases = [f.target for f in adapter.full.values() if f.chosen.copy in ("plain", "modules_to_save") and ctx.is_tied_alias(f.target) and trained(f)]
    if aliases:
        # T5 / BART: encoder/decoder.embed_tokens are loaded as ties of `shared`; separate trained
        # copies cannot be written so that transformers keeps them apart.
        raise RefusedError("Merge refused", diagnosis.adapter.checkpoint.path,
                           f"the adapter trains {', '.join(sorted(aliases))}, which transformers ties to {ctx.resolve(aliases[0])} when it loads the model",
                           "A merged checkpoint cannot keep them apart; use the adapter unmerged (PeftModel.from_pretrained).")
    embed_trained = False  # a tied base's embedding replaced by a trained copy (modules_to_save)
    new_heads = []
    for full in adapter.full.values():
        if full.chosen.copy == "original_module" or full.chosen.module in ctx.never_called:
            continue  # the frozen copy; or a module the model never calls (T5's `shared`): no effect in training
        name = ctx.resolve(full.target)
        if name is None:
            if full in ctx.new_heads:  # a SEQ_CLS adapter's score head: a new tensor of the merged model
                info = full.chosen.info
                new_heads.append(Job(full.target, info.shape, out_dtype(info), info, replace=info))
            continue
        tied_head = ctx.is_tied_head(full.target)
        if tied_head and not trained(full):
            continue  # the shared weight itself (``shared``): no reason to untie
        job = head_job(full.target) if tied_head else jobs[name]
        job.replace = full.chosen.info
        embed_trained |= name == embed and not tied_head and trained(full)
    if shared is not None and jobs[embed].replace is None:
        jobs[embed].replace = shared  # e.g. a tied head's base_layer copy is the embedding too
    tie_kept = cfg.ensure_weight_tying
    tied_sides = set(ctx.tied_lora.values())
    for module, (lm, weight) in ctx.lora_targets.items():
        if weight is None or lm.A is None or lm.B is None or module in ctx.never_called:
            continue
        if tie_kept and ctx.tied_lora.get(module) == "head" and "embedding" in tied_sides:
            continue  # ensure_weight_tying: the head's LoRA is the embedding's delta, trained once on both sides
        tied_head = ctx.is_tied_head(f"{module}.weight") and not tie_kept
        job = head_job(f"{module}.weight") if tied_head else jobs[weight.name]
        transposed = lm.embedding or bool(is_transposed(job.shape, lm.A.info.shape, lm.B.info.shape, ctx.fan_in_fan_out, rows_may_differ=vocab.is_vocab(weight.name)))
        magnitude = lm.magnitude.info if (cfg.use_dora and lm.magnitude is not None) else None
        job.deltas.append(Delta(module, lm.A.info, lm.B.info, cfg.scale_for(module), transposed, magnitude))
        if lm.B_bias is not None and cfg.lora_bias:
            bias = ctx.tensor(f"{module}.bias")
            if bias is not None:
                jobs[bias.name].bias_deltas.append((lm.B_bias.info, cfg.scale_for(module)))

    # A tied base whose embedding the adapter changes (modules_to_save copy, LoRA) while the head
    # keeps the base weight: training saw two different matrices, so write both (untie). PEFT's
    # merge_and_unload does so for modules_to_save; for LoRA it would merge into the shared weight
    # and change the head too, which is not what the trained model computed. A base_layer copy
    # (the shared weight as saved, grown rows included) changes both sides alike: still tied.
    if vocab.tied and embed and head is None and not tie_kept and (embed_trained or jobs[embed].deltas):
        head_job(_tied_head(diagnosis)[0])
    for module, delta in adapter.trainable_tokens.items():
        weight = ctx.token_embedding_for[module]
        indices = cfg.trainable_token_indices.get(module.rpartition(".")[2], cfg.trainable_token_indices.get(None))
        if weight is None or not indices:
            continue
        if ctx.is_tied_head(f"{module}.weight"):
            # PEFT ties the head's token adapter to the embedding's (the same delta): it lands in the
            # shared weight while tied, in the head's own copy once untied.
            if head is not None:
                head.tokens.append((indices, delta.info))
            continue
        jobs[weight.name].tokens.append((indices, delta.info))
    untied_extra = []
    if head is not None:
        untied_extra.append(head)
        # transformers ties the decoder's bias too while the embeddings are tied, and only then:
        # an untied BERT/RoBERTa checkpoint stores it (the same values) or loads it uninitialized.
        head_name, head_biases = _tied_head(diagnosis)
        for own_bias, tied_bias in head_biases:
            if head.name == head_name and tied_bias in jobs and own_bias not in jobs:
                untied_extra.append(dataclasses.replace(jobs[tied_bias], name=own_bias))
        # Likewise T5 / BART's encoder/decoder.embed_tokens: tied to `shared` only while the word
        # embeddings are tied; once untied they load from the checkpoint, so write them (same values).
        for alias in ctx.index.tied_aliases_of(embed):
            if alias not in jobs:
                untied_extra.append(dataclasses.replace(jobs[embed], name=alias))
    ordered = []
    for name, job in jobs.items():
        ordered.append(job)
        if name == embed:
            ordered += untied_extra  # the untied head follows its embedding
    ordered += new_heads
    _check_dtypes(ordered, diagnosis)
    config = updated_config(diagnosis.base.config, plan.rows) if grows else dict(diagnosis.base.config)
    if any(f.code is Code.QUANTIZED_BASE for f in diagnosis.findings):  # a leftover (a real one refused above)
        config.pop("quantization_config", None)
    if head is not None:
        config["tie_word_embeddings"] = False  # as PEFT's merge_and_unload does once the sides differ
        if isinstance(config.get("text_config"), dict) and "tie_word_embeddings" in config["text_config"]:
            config["text_config"] = {**config["text_config"], "tie_word_embeddings": False}
    if dtype != "auto":
        for key in ("dtype", "torch_dtype"):
            if key in config:
                config[key] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype]
    return MergePlan(diagnosis, ordered, config, head.name if head else None, init or "mean", device, growth)


# -- execution -------------------------------------------------------------------------------------


def _grown(job: Job, reader: TensorReader, plan: MergePlan, seed: int):
    """The whole tensor grown to its output shape, old rows as stored, new rows by --init (resize's
    rules, final_logits_bias zeros included), from the base's own rows: read once, in its dtype."""
    return grow(reader.read(job.source), plan.vocab, job.name, seed=seed, init_range=initializer_range(plan.diagnosis.base.config), subword=None)


def _all_finite(t) -> bool:
    """``bool(torch.isfinite(t).all())``, about 10x faster on the CPU for the common float dtypes:
    ``aminmax`` is one vectorized pass, propagates NaN, and shows +/-inf as the max/min."""
    import torch

    if t.numel() == 0:
        return True
    if t.dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        lo, hi = torch.aminmax(t)
        return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))
    return bool(torch.isfinite(t).all())


def _fp32(t, dev: str, *, copy: bool = False):
    """``t`` on the device in fp32, moved first and converted there: a blocking host-to-device copy
    that also changes the dtype converts on the host, sending twice the bytes over the bus."""
    import torch

    return t.to(dev).to(torch.float32, copy=copy)


def _finite(t, job: Job, fp32=None) -> None:
    """Refuse NaN/Inf in a result; ``fp32``, the values before the cast, tells an overflow of the
    output dtype (fp16 tops out at 65504) from NaN/Inf that came with the inputs."""
    if not t.is_floating_point() or _all_finite(t):
        return
    if fp32 is not None and _all_finite(fp32):
        import torch

        top = float(fp32.abs().max())
        raise InvalidInputError("Refusing to write an overflowed result", job.name,
                                f"merged values up to {top:.4g} do not fit {job.dtype} (largest {torch.finfo(t.dtype).max:.6g})",
                                "Write a wider dtype: --dtype bf16 (same range as fp32) or --dtype fp32; nothing was written.")
    raise InvalidInputError("Refusing to write a non-finite result", job.name, "the merged tensor contains NaN or Inf", "Check the adapter and the base for NaN/Inf values (`lora-inspector diff --values`); nothing was written.")


def _whole(job: Job, base: TensorReader, adapter: TensorReader, plan: MergePlan, seed: int):
    """Small tensors (biases, norms, scalars): computed whole."""
    from inspector.loader import torch_dtype

    dev = plan.device
    if job.replace is not None:
        t = _fp32(adapter.read(job.replace), dev)
    elif job.shape != job.source.shape:
        t = _fp32(_grown(job, base, plan, seed), dev)
    else:
        t = _fp32(base.read(job.source), dev)
    for info, scale in job.bias_deltas:
        t = t + scale * _fp32(adapter.read(info), dev)
    out = t.to(torch_dtype(job.dtype))
    _finite(out, job, t)  # on the device: one reduction there instead of one on the host
    return out.cpu()


def _blocks(job: Job, base: TensorReader, adapter: TensorReader, plan: MergePlan, seed: int) -> Iterator:
    """Row blocks of a 2-D+ output tensor, in the output dtype, on the CPU."""
    import torch

    from inspector.loader import torch_dtype

    dev, out_dtype = plan.device, torch_dtype(job.dtype)
    rows = job.shape[0]
    row_numel = max(1, math.prod(job.shape[1:]))
    step = max(1, CHUNK_BYTES // (4 * row_numel))
    # Copied through as stored (only the finite check): an untouched base tensor, or a full copy
    # from the adapter already in the output dtype and shape (an fp32 round trip gives the same bits).
    copy = job.replace is not None and not (job.deltas or job.tokens) and job.replace.dtype == job.dtype and job.replace.shape == job.shape
    if job.unchanged or copy:
        reader, info = (adapter, job.replace) if copy else (base, job.source)
        for r0 in range(0, rows, step):
            block = reader.read_rows(info, r0, r0 + step)
            _finite(block, job)
            yield block
        return
    source, src_reader = (job.replace, adapter) if job.replace is not None else (job.source, base)
    # Rows nobody carries need the whole matrix for their statistics: read it once and slice it.
    whole = _grown(job, base, plan, seed) if job.replace is None and rows > source.shape[0] else None
    loras = [(d, _fp32(adapter.read(d.A), dev), _fp32(adapter.read(d.B), dev)) for d in job.deltas]
    dora = [(d, A, B) for d, A, B in loras if d.magnitude is not None]
    tokens = [(torch.tensor(idx, dtype=torch.long), _fp32(adapter.read(info), dev)) for idx, info in job.tokens]

    def rows_fp32(r0: int, r1: int):
        if whole is not None:  # a copy: the LoRA deltas are added in place, and DoRA reads rows twice
            w = _fp32(whole[r0:r1], dev, copy=True)
        else:
            w = _fp32(src_reader.read_rows(source, r0, r1), dev)
        for d, A, B in loras:
            # Linear: rows of B @ A; transposed (Conv1D, Embedding): rows of (B @ A).T = A.T @ B.T
            delta = A[:, r0:r1].T @ B.T if d.transposed else B[r0:r1] @ A
            w.add_(delta.mul_(d.scale))  # in place: the same bits as scale * delta, one temporary less
        return w

    # DoRA: W' = m / ||W + s B A|| * (W + s B A), the norm per output unit. For Linear that is a row
    # (local to a block); for Conv1D and Embedding a column over all rows, hence a first pass.
    column_norms = {}
    for d, _, _ in dora:
        if d.transposed:
            sq = None
            for r0 in range(0, rows, step):
                w = rows_fp32(r0, min(rows, r0 + step))
                sq = w.square().sum(dim=0) if sq is None else sq + w.square().sum(dim=0)
            column_norms[d.module] = sq.sqrt()
    magnitudes = {d.module: _fp32(adapter.read(d.magnitude), dev) for d, _, _ in dora}

    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        w = rows_fp32(r0, r1)
        for d, _, _ in dora:
            m = magnitudes[d.module]
            if d.transposed:
                w.mul_((m / column_norms[d.module])[None, :])
            else:
                w.mul_((m[r0:r1] / w.norm(dim=1))[:, None])
        for idx, delta in tokens:
            hit = (idx >= r0) & (idx < r1)
            if bool(hit.any()):
                w.index_copy_(0, (idx[hit] - r0).to(dev), delta[hit.to(delta.device)])
        out = w.to(out_dtype)
        _finite(out, job, w)
        yield out.cpu()


def execute(plan: MergePlan, out: str, *, seed: int = 0, force: bool = False, max_shard_size: int = 5_000_000_000, progress: Progress | None = None) -> MergeResult:
    """Stream every job through the writer; config, generation config and tokenizer files alongside."""
    diagnosis = plan.diagnosis
    base_root, adapter_root = diagnosis.base.root, diagnosis.adapter.checkpoint.root
    tok_source = Path(diagnosis.tokenizer.directory) if diagnosis.tokenizer else base_root  # --tokenizer, else adapter's, else base's
    extras = output_side_files(base_root, tok_source)
    folders = output_side_folders(base_root, tok_source)  # sentence-transformers modules, chat templates
    planned = [OutputTensor(j.name, j.dtype, j.shape) for j in plan.jobs]
    biases = plan.diagnosis.binding.vocab.biases
    stats = {"tensors": len(plan.jobs), "lora": 0, "replaced": 0, "tokens": 0, "grown": 0, "copied": 0}
    inputs = [base_root, adapter_root] + ([tok_source] if tok_source not in (base_root, adapter_root) else [])
    stamps = diagnosis.base.stamps + diagnosis.adapter.checkpoint.stamps
    with CheckpointWriter(out, inputs=inputs, tensors=planned, max_shard_size=max_shard_size, force=force,
                          extra_bytes=side_bytes(extras, folders), stamps=stamps) as writer:
        with TensorReader(base_root, diagnosis.base.stamps) as base, TensorReader(adapter_root, diagnosis.adapter.checkpoint.stamps) as adapter:
            for job in plan.jobs:
                stats["lora"] += len(job.deltas)
                stats["replaced"] += job.replace is not None
                stats["tokens"] += len(job.tokens)
                stats["grown"] += job.shape != job.source.shape and job.replace is None
                stats["copied"] += job.unchanged
                # Row blocks for matrices; vocabulary biases ([V] or [1, V], grown along the last axis) whole.
                if len(job.shape) >= 2 and job.name not in biases:
                    writer.write_rows(job.name, _blocks(job, base, adapter, plan, seed))
                else:
                    writer.write(job.name, _whole(job, base, adapter, plan, seed))
                if progress:
                    progress(job.source.nbytes, diagnosis.base.total_bytes)
        writer.add_file("config.json", json.dumps(plan.config, indent=2) + "\n")
        copy_side(writer, extras, folders)
        writer.commit()
    return MergeResult(Path(out), plan, stats, tokenizer_from(extras, tok_source))


def _sleeping_omp_waiters() -> None:
    """Before torch loads: OpenMP threads waiting at the end of a parallel op sleep instead of
    spinning. The merge runs few, large ops (row blocks of up to CHUNK_BYTES), so sleeping costs
    nothing there, while spinning waiters took the CPU from the thread doing the work whenever the
    machine had other load (473 MB reference merge on 2 cores: ~6 s -> ~3.5 s wall, identical output).
    No effect once torch is loaded or when the user set OMP_WAIT_POLICY."""
    import os
    import sys

    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def merge_adapter(base_path: str, adapter_path: str, out: str, *, device: str = "auto", dtype: str = "auto", init: str | None = None,
                  seed: int = 0, force: bool = False, max_shard_size: int = 5_000_000_000, tokenizer_dir: str | None = None,
                  progress: Progress | None = None) -> MergeResult:
    """check -> plan -> stream. Refuses (exit 1, nothing written) what the merge cannot repair."""
    _sleeping_omp_waiters()
    interrupts.heavy_import("torch")  # stop signals held while it loads (see inspector/interrupts.py)
    if dtype not in ("auto", *DTYPES):
        raise UsageError("Invalid --dtype", None, f"{dtype!r} is not auto, bf16, fp16 or fp32", "Use --dtype auto|bf16|fp16|fp32.")
    if init == "subword_mean":  # needs two tokenizers and the pieces' rows: resize's job, not the merge's
        raise UsageError("Invalid --init", None, "subword_mean is for `lora-inspector resize --tokenizer DIR`", "Use --init mean, hf_mvn, normal or zero with merge (or resize the base first).")
    diagnosis = run_check(base_path, adapter_path, tokenizer_dir, command="merge")
    plan = plan_merge(diagnosis, init=init, dtype=dtype, device=resolve_device(device))
    return execute(plan, out, seed=seed, force=force, max_shard_size=max_shard_size, progress=progress)
