"""The merge plan: from a diagnosis (headers only) to one job per output tensor.

``plan_merge`` refuses what the merge cannot repair, grows the vocabulary to the size the adapter
implies (``repair.plan_resize``, the same plan ``resize`` uses), and turns every adapter tensor
into work on one output tensor, in a few named steps. The PEFT semantics each step reproduces are
described in docs/design.md. No torch here (transformers is asked, on the meta device, only where a
tied base's head name is not known).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path

from inspector import interrupts
from inspector.adapter import FullTensor, is_transposed
from inspector.base import known_tied_head
from inspector.binding import Binding, shell_command
from inspector.diagnose import Diagnosis
from inspector.errors import InvalidInputError, RefusedError
from inspector.findings import Code
from inspector.io.tensor import FLOAT_DTYPES, TensorInfo
from inspector.repair import DEFAULT_MERGE_INIT, ResizePlan, plan_resize, updated_config
from inspector.task_config import task_config

DTYPES = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}


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


# -- refusals --------------------------------------------------------------------------------------


def _refuse_unrepairable(diagnosis: Diagnosis, init_explicit: bool) -> None:
    """Errors are repaired only where check says how (Finding.repair); the rest refuse the merge,
    with the first one's own fix as the hint."""
    repairs = {"resize", "init"} if init_explicit else {"resize"}
    blocking = [f for f in diagnosis.findings if f.severity == "error" and f.repair not in repairs]
    if not blocking:
        return
    codes = sorted({f.code.code for f in blocking}, key=lambda c: int(c[2:]))
    first = next((f for f in blocking if f.code is Code.QUANTIZED_BASE), blocking[0])  # the cause, not its symptoms
    if all(f.repair == "init" for f in blocking):
        hint = "What training saw for those rows is lost; merge anyway with an explicit --init (e.g. --init mean)."
    else:
        check = shell_command("lora-inspector", "check", diagnosis.base.path, diagnosis.adapter.checkpoint.path)
        others = f" `{check}` lists all {len(blocking)}." if len(blocking) > 1 else ""
        hint = f"{first.code.code}: {first.hint}{others}"
    raise RefusedError("Merge refused", diagnosis.adapter.checkpoint.path, f"{len(blocking)} error finding(s) the merge cannot repair ({', '.join(codes)}): {first.message}", hint)


def _trained(b: Binding, full: FullTensor) -> bool:
    """A modules_to_save replacement, as opposed to a copy of the base's own (possibly resized) layer
    that PEFT saves beside a LoRA layer (``base_layer``) or as an embedding layer (plain)."""
    return full.chosen.copy == "modules_to_save" or (full.chosen.copy == "plain" and b.config.saves(full.chosen.module))


def _refuse_trained_aliases(diagnosis: Diagnosis) -> None:
    """T5 / BART: encoder/decoder.embed_tokens are loaded as ties of `shared`; separate trained copies
    cannot be written so that transformers keeps them apart."""
    b = diagnosis.binding
    aliases = [f.target for f in b.adapter.full.values() if f.chosen.copy in ("plain", "modules_to_save") and b.is_tied_alias(f.target) and _trained(b, f)]
    if aliases:
        raise RefusedError("Merge refused", diagnosis.adapter.checkpoint.path,
                           f"the adapter trains {', '.join(sorted(aliases))}, which transformers ties to {b.resolve(aliases[0])} when it loads the model",
                           "A merged checkpoint cannot keep them apart; use the adapter unmerged (PeftModel.from_pretrained).")  # fmt: skip


# -- the tied head -------------------------------------------------------------------------------------


def tied_head(diagnosis: Diagnosis) -> tuple[str, list[tuple[str, str]]]:
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
    return head_from_transformers(diagnosis.base.root, frozenset(names)) or ("lm_head.weight", [])


@functools.lru_cache(maxsize=4)
def head_from_transformers(root: Path, names: frozenset[str]) -> tuple[str, list[tuple[str, str]]] | None:
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


class _Head:
    """The untied head of a tied base. Made the first time a step needs it (the adapter makes the
    two sides differ), starting from the shared weight as PEFT saved it (``shared``): grown rows
    included when the vocabulary was resized."""

    def __init__(self, jobs: dict[str, Job], embed: str | None, shared: TensorInfo | None) -> None:
        self.jobs, self.embed, self.shared = jobs, embed, shared
        self.job: Job | None = None

    def get(self, target: str) -> Job:
        if self.job is None:
            src = self.jobs[self.embed]
            self.job = Job(target, src.shape, src.dtype, src.source, replace=self.shared)
        return self.job


def _shared_weight(b: Binding, embed: str | None) -> TensorInfo | None:
    """A tied pair's shared weight as PEFT saved it: a saved layer copy of either side, or the frozen
    ``original_module`` beside a modules_to_save copy. PEFT loads it into the shared parameter, so the
    side the adapter does not replace starts from it (not from the base plus --init rows)."""
    if not (b.vocab.tied and embed):
        return None
    pair = [f for f in b.adapter.full.values() if b.resolve(f.target) == embed]
    layers = [f.chosen.info for f in pair if f.chosen.copy != "original_module" and not _trained(b, f)]
    frozen = [c.info for f in pair for c in f.copies if c.copy == "original_module"]
    return (layers + frozen or [None])[0]


# -- the steps ----------------------------------------------------------------------------------------


def _growth(diagnosis: Diagnosis, init: str | None) -> ResizePlan | None:
    target = diagnosis.target
    return plan_resize(diagnosis.base, target.rows, target.source, init or DEFAULT_MERGE_INIT) if target.grows else None


def _out_dtype(info: TensorInfo, dtype: str) -> str:
    return DTYPES[dtype] if dtype != "auto" and info.dtype in FLOAT_DTYPES else info.dtype


def _base_jobs(diagnosis: Diagnosis, growth: ResizePlan | None, dtype: str) -> dict[str, Job]:
    """One job per base tensor: its (grown) shape, its output dtype, nothing changed yet."""
    jobs = {}
    for t in diagnosis.base.tensors:
        shape = growth.new_shape(t.shape, t.name) if growth and growth.touches(t.name) else t.shape
        jobs[t.name] = Job(t.name, shape, _out_dtype(t, dtype), t)
    return jobs


def _replacements(b: Binding, jobs: dict[str, Job], head: _Head, dtype: str) -> tuple[list[Job], bool]:
    """modules_to_save copies and saved layers replace base tensors; new task heads become new
    tensors. Returns those new tensors' jobs, and whether a tied base's embedding was replaced by a
    trained copy."""
    new_heads, embed_trained = [], False
    for full in b.adapter.full.values():
        if full.chosen.copy == "original_module" or full.chosen.module in b.never_called:
            continue  # the frozen copy; or a module the model never calls (T5's `shared`): no effect in training
        info, name = full.chosen.info, b.resolve(full.target)
        if name is None:
            if full in b.new_heads:  # a SEQ_CLS adapter's score head: a new tensor of the merged model
                new_heads.append(Job(full.target, info.shape, _out_dtype(info, dtype), info, replace=info))
            continue
        is_head = b.is_tied_head(full.target)
        if is_head and not _trained(b, full):
            continue  # the shared weight itself (``shared``): no reason to untie
        job = head.get(full.target) if is_head else jobs[name]
        job.replace = info
        if full in b.reheaded:  # a classifier for another number of labels: the adapter's shape (LI405)
            job.shape = info.shape
        embed_trained |= name == head.embed and not is_head and _trained(b, full)
    if head.shared is not None and jobs[head.embed].replace is None:
        jobs[head.embed].replace = head.shared  # e.g. a tied head's base_layer copy is the embedding too
    return new_heads, embed_trained


def _lora_deltas(b: Binding, jobs: dict[str, Job], head: _Head) -> None:
    """Each LoRA pair becomes a delta on its weight (the untied head's own job for a head's LoRA),
    lora_B.bias a delta on the layer's bias."""
    cfg, tie_kept = b.config, b.config.ensure_weight_tying
    tied_sides = set(b.tied_lora.values())
    for module, (lm, weight) in b.lora_targets.items():
        if weight is None or lm.A is None or lm.B is None or module in b.never_called:
            continue
        if tie_kept and b.tied_lora.get(module) == "head" and "embedding" in tied_sides:
            continue  # ensure_weight_tying: the head's LoRA is the embedding's delta, trained once on both sides
        job = head.get(f"{module}.weight") if b.is_tied_head(f"{module}.weight") and not tie_kept else jobs[weight.name]
        rows_may_differ = b.vocab.is_vocab(weight.name)
        transposed = lm.embedding or bool(is_transposed(job.shape, lm.A.info.shape, lm.B.info.shape, b.fan_in_fan_out, rows_may_differ=rows_may_differ))
        magnitude = lm.magnitude.info if (cfg.use_dora and lm.magnitude is not None) else None
        job.deltas.append(Delta(module, lm.A.info, lm.B.info, cfg.scale_for(module), transposed, magnitude))
        bias = b.tensor(f"{module}.bias") if lm.B_bias is not None and cfg.lora_bias else None
        if bias is not None:
            jobs[bias.name].bias_deltas.append((lm.B_bias.info, cfg.scale_for(module)))


def _untie_if_one_side_changed(diagnosis: Diagnosis, jobs: dict[str, Job], head: _Head, embed_trained: bool) -> None:
    """A tied base whose embedding the adapter changes (modules_to_save copy, LoRA) while the head
    keeps the base weight: training saw two different matrices, so write both (untie). PEFT's
    merge_and_unload does so for modules_to_save; for LoRA it would merge into the shared weight and
    change the head too, which is not what the trained model computed. A base_layer copy (the shared
    weight as saved, grown rows included) changes both sides alike: still tied."""
    b = diagnosis.binding
    if b.vocab.tied and head.embed and head.job is None and not b.config.ensure_weight_tying and (embed_trained or jobs[head.embed].deltas):
        head.get(tied_head(diagnosis)[0])


def _trainable_tokens(b: Binding, jobs: dict[str, Job], head: _Head) -> None:
    """Trainable-token deltas replace their rows; a tied head's land in the shared weight while tied
    (PEFT ties the head's token adapter to the embedding's), in the head's own copy once untied."""
    for module, delta in b.adapter.trainable_tokens.items():
        weight = b.token_embedding_for[module]
        indices = b.config.trainable_token_indices.get(module.rpartition(".")[2], b.config.trainable_token_indices.get(None))
        if weight is None or not indices:
            continue
        if b.is_tied_head(f"{module}.weight"):
            if head.job is not None:
                head.job.tokens.append((indices, delta.info))
            continue
        jobs[weight.name].tokens.append((indices, delta.info))


def _ordered(diagnosis: Diagnosis, jobs: dict[str, Job], head: _Head, new_heads: list[Job]) -> list[Job]:
    """The base's order, the untied head (and what transformers unties with it) after its embedding,
    new task heads last."""
    untied: list[Job] = []
    if head.job is not None:
        untied.append(head.job)
        # transformers ties the decoder's bias too while the embeddings are tied, and only then: an
        # untied BERT/RoBERTa checkpoint stores it (the same values) or loads it uninitialized.
        head_name, head_biases = tied_head(diagnosis)
        for own_bias, tied_bias in head_biases:
            if head.job.name == head_name and tied_bias in jobs and own_bias not in jobs:
                untied.append(dataclasses.replace(jobs[tied_bias], name=own_bias))
        # Likewise T5 / BART's encoder/decoder.embed_tokens: tied to `shared` only while the word
        # embeddings are tied; once untied they load from the checkpoint, so write them (same values).
        for alias in diagnosis.binding.index.tied_aliases_of(head.embed):
            if alias not in jobs:
                untied.append(dataclasses.replace(jobs[head.embed], name=alias))
    ordered = []
    for name, job in jobs.items():
        ordered.append(job)
        if name == head.embed:
            ordered += untied
    return ordered + new_heads


def _merged_config(diagnosis: Diagnosis, jobs: list[Job], untied: bool, dtype: str) -> dict:
    """config.json of the merged model: the grown vocabulary, a new head's task class and labels, no
    leftover quantization_config, untied embeddings, the output dtype."""
    target = diagnosis.target
    config = updated_config(diagnosis.base.config, target.rows) if target.grows else dict(diagnosis.base.config)
    # A SEQ_CLS/TOKEN_CLS head the base lacks, or has for another number of labels (re-headed).
    heads = {f.target: f.chosen.info.shape for f in (*diagnosis.binding.new_heads, *diagnosis.binding.reheaded)}
    config = task_config(config, diagnosis.adapter.config.task_type, heads)  # its task class and labels
    if any(f.code is Code.QUANTIZED_BASE for f in diagnosis.findings):  # a leftover (a real one refused earlier)
        config.pop("quantization_config", None)
    if untied:
        config["tie_word_embeddings"] = False  # as PEFT's merge_and_unload does once the sides differ
        if isinstance(config.get("text_config"), dict) and "tie_word_embeddings" in config["text_config"]:
            config["text_config"] = {**config["text_config"], "tie_word_embeddings": False}
    if dtype != "auto":
        for key in ("dtype", "torch_dtype"):
            if key in config:
                config[key] = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[dtype]
    return config


def _check_dtypes(jobs: list[Job], diagnosis: Diagnosis) -> None:
    """Every tensor the merge will read must have a torch dtype: refuse while planning, naming the file."""
    from inspector.io.loader import torch_dtype

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
    _refuse_trained_aliases(diagnosis)
    b = diagnosis.binding
    growth = _growth(diagnosis, init)
    jobs = _base_jobs(diagnosis, growth, dtype)
    embed = b.vocab.embeddings[0] if b.vocab.embeddings else None
    head = _Head(jobs, embed, _shared_weight(b, embed))
    new_heads, embed_trained = _replacements(b, jobs, head, dtype)
    _lora_deltas(b, jobs, head)
    _untie_if_one_side_changed(diagnosis, jobs, head, embed_trained)
    _trainable_tokens(b, jobs, head)
    ordered = _ordered(diagnosis, jobs, head, new_heads)
    _check_dtypes(ordered, diagnosis)
    config = _merged_config(diagnosis, ordered, head.job is not None, dtype)
    return MergePlan(diagnosis, ordered, config, head.job.name if head.job else None, init or DEFAULT_MERGE_INIT, device, growth)
