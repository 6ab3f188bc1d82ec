"""``verify BASE ADAPTER MERGED``: does MERGED compute what PeftModel(BASE, ADAPTER) computes?

The same token sequences go through PeftModel (BASE resized to the vocabulary the merge gives it)
and through MERGED, one model in memory at a time (compute, free, load the other). Per prompt: the
largest |logit difference|, the KL divergence of the next-token distributions and top-1 agreement;
they agree when the largest difference is within a tolerance set by the dtype. Where they do not,
the first layer whose hidden states diverge is named; where MERGED computes what BASE computes
(PeftModel with its adapter disabled), the merge was a no-op. torch, transformers and PEFT are
imported only here.
"""

from __future__ import annotations

import gc
import json
import math
from dataclasses import dataclass
from pathlib import Path

from inspector.errors import UsageError

# Largest |difference| allowed, relative to the largest |logit|: a merge computes W + s·B@A
# in another order than PeftModel's x@W + s·(x@A)@B, so equal models differ by rounding only.
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 1e-2}
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
STORED = {"F32": "fp32", "F64": "fp32", "BF16": "bf16", "F16": "fp16"}  # safetensors dtype -> its tolerance's name
DEFAULT_TEXTS = ("The quick brown fox jumps over the lazy dog.", "def fibonacci(n):\n    return", "Hello")
MAX_NEW_TOKEN_IDS = 32  # the adapter's new tokens, one prompt of at most this many


@dataclass(frozen=True)
class PromptResult:
    label: str
    tokens: int
    max_abs: float  # largest |logit (or hidden state) difference| over every position
    kl: float | None  # KL(PeftModel || MERGED) of the last position's next-token distribution
    top1: float | None  # share of positions whose argmax agrees
    agrees: bool

    def as_json(self) -> dict:
        # null: MERGED could not run the prompt (no rows for its token ids); JSON has no Infinity
        max_abs = self.max_abs if math.isfinite(self.max_abs) else None
        return {"prompt": self.label, "tokens": self.tokens, "max_abs": max_abs, "kl": self.kl, "top1": self.top1, "agrees": self.agrees}


@dataclass(frozen=True)
class VerifyResult:
    base: str
    adapter: str
    merged: str
    head: str  # "causal-lm" | "classification" | "token-classification" | "question-answering" | "hidden-state"
    device: str
    dtype: str
    tolerance: float  # TOLERANCE of the coarsest of --dtype and MERGED's stored float dtypes
    prompts: tuple[PromptResult, ...]
    diverging: str | None = None  # the first layer whose hidden states diverge ("embeddings", "layer 3")
    noop: bool = False  # MERGED computes what BASE computes, PeftModel does not

    @property
    def agrees(self) -> bool:
        return all(p.agrees for p in self.prompts)

    def as_json(self) -> dict:
        return {"base": self.base, "adapter": self.adapter, "merged": self.merged, "head": self.head, "device": self.device, "dtype": self.dtype,
                "tolerance": self.tolerance, "agrees": self.agrees, "noop": self.noop, "diverging_layer": self.diverging,
                "prompts": [p.as_json() for p in self.prompts]}  # fmt: skip


@dataclass
class _Outputs:
    main: list  # per prompt: logits [seq, vocab] / classification logits / last hidden state (fp32, CPU)
    hidden: list  # per prompt: the hidden states per layer (fp32, CPU)


def verify(base: str, adapter: str, merged: str, *, tokenizer_dir: str | None = None, prompts_file: str | None = None,
           device: str = "auto", dtype: str = "fp32") -> VerifyResult:
    from inspector.check import run_check
    from inspector.interrupts import heavy_import
    from inspector.io.checkpoint import read_checkpoint

    diagnosis = run_check(base, adapter, tokenizer_dir, command="verify")  # names, the vocabulary the merge gives BASE
    merged_ckpt = read_checkpoint(merged)
    if merged_ckpt.kind != "model" or not merged_ckpt.tensors:
        raise UsageError("Not a merged model", merged, "MERGED is not a model checkpoint", "Pass the directory `lora-inspector merge` (or merge_and_unload + save_pretrained) wrote.")
    torch = heavy_import("torch")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    head = _head(diagnosis)
    sequences = _prompts(diagnosis, tokenizer_dir, prompts_file)
    torch_dtype = getattr(torch, DTYPES[dtype])
    with torch.no_grad():
        peft, plain = _run_peft(diagnosis, head, sequences, device, torch_dtype, merged)
        mine = _run(_load(merged, head, torch_dtype).to(device), sequences, device)
    # A MERGED stored in bf16 / fp16 carries W + s·B@A rounded to it, whatever dtype both run in.
    stored = [STORED[d] for d in merged_ckpt.dtypes if d in STORED]
    tol = max(TOLERANCE[d] for d in (dtype, *stored))
    results = tuple(_compare(label, ids, a, b, tol, head) for (label, ids), a, b in zip(sequences, peft.main, mine.main))
    diverging = noop = None
    if not all(r.agrees for r in results):
        failed = [i for i, r in enumerate(results) if not r.agrees]
        ran = [i for i in failed if mine.main[i] is not None and peft.main[i] is not None]
        diverging = _first_diverging(peft.hidden[ran[0]], mine.hidden[ran[0]], tol) if ran else "embeddings (MERGED lacks the new tokens' rows)"
        # BASE's logits cover the old vocabulary only: compare over the columns both have
        pairs = [(a[..., : b.shape[-1]], b[..., : a.shape[-1]]) for a, b in zip(plain.main, mine.main) if a is not None and b is not None]
        noop = bool(pairs) and all(_max_abs(a, b) <= tol * _scale(a) for a, b in pairs)
    return VerifyResult(base, adapter, merged, head, device, dtype, tol, results, diverging, bool(noop))


def _head(diagnosis) -> str:
    task = diagnosis.adapter.config.task_type
    if task in ("SEQ_CLS",):
        return "classification"
    if task == "TOKEN_CLS":
        return "token-classification"
    if task == "QUESTION_ANS":
        return "question-answering"
    if task == "CAUSAL_LM" or any(str(a).endswith("ForCausalLM") for a in diagnosis.base.config.get("architectures") or ()):
        return "causal-lm"
    return "hidden-state"


def _load(path: str, head: str, torch_dtype, num_labels: int | None = None):
    import transformers

    cls = {"causal-lm": transformers.AutoModelForCausalLM, "classification": transformers.AutoModelForSequenceClassification,
           "token-classification": transformers.AutoModelForTokenClassification,
           "question-answering": transformers.AutoModelForQuestionAnswering}.get(head, transformers.AutoModel)  # fmt: skip
    # BASE under an adapter trained with another label count: built with the adapter's head size, as
    # training did (num_labels=N, ignore_mismatched_sizes=True); PEFT's copy of the head replaces it.
    extra = {"num_labels": num_labels, "ignore_mismatched_sizes": True} if num_labels else {}
    return cls.from_pretrained(path, dtype=torch_dtype, **extra).eval()


def _labels(merged: str) -> int | None:
    """How many labels MERGED's config names (the adapter's head), or None."""
    try:
        config = json.loads((Path(merged) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    labels = config.get("id2label") if isinstance(config, dict) else None
    return len(labels) if isinstance(labels, dict) and labels else None


def _run_peft(diagnosis, head: str, sequences, device: str, torch_dtype, merged: str) -> tuple[_Outputs, _Outputs]:
    """PeftModel's outputs, and BASE's (the adapter disabled); then the model is freed."""
    from peft import PeftModel

    model = _load(diagnosis.base.path, head, torch_dtype, _labels(merged) if head in ("classification", "token-classification") else None)
    rows = diagnosis.target.rows
    if diagnosis.target.grows and rows:
        model.resize_token_embeddings(rows, mean_resizing=False)
        _uncarried_rows(model, diagnosis, merged)
    peft = PeftModel.from_pretrained(model, diagnosis.adapter.checkpoint.path).to(device).eval()
    outputs = _run(peft, sequences, device)
    with peft.disable_adapter():
        plain = _run(peft, sequences, device)
    del peft, model
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
    return outputs, plain


def _uncarried_rows(model, diagnosis, merged: str) -> None:
    """Grown rows the adapter does not carry are the merge's --init (not training's): take them from
    MERGED, as the merge wrote them, so that only what training changed is compared."""
    import torch

    from inspector.io.checkpoint import read_checkpoint
    from inspector.io.loader import TensorReader

    target, vocab = diagnosis.target, diagnosis.binding.vocab
    ckpt = read_checkpoint(merged)
    with TensorReader(ckpt.root, ckpt.stamps) as reader, torch.no_grad():
        for name, param in model.named_parameters():
            info = ckpt.by_name.get(name)
            if name in target.carried or name not in (*vocab.matrices, *vocab.biases) or info is None or info.shape != tuple(param.shape):
                continue
            new = reader.read(info)[target.base_rows:] if name in vocab.matrices else reader.read(info)[..., target.base_rows:]
            (param[target.base_rows:] if name in vocab.matrices else param[..., target.base_rows:]).copy_(new)


def _run(model, sequences, device: str) -> _Outputs:
    import torch

    main, hidden = [], []
    rows = model.get_input_embeddings().num_embeddings
    for _label, ids in sequences:
        if max(ids) >= rows:  # a token this model has no row for (a merge that did not grow the vocabulary)
            main.append(None)
            hidden.append([])
            continue
        out = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True)
        logits = getattr(out, "logits", None)
        if logits is None and getattr(out, "start_logits", None) is not None:  # a QA head: start and end per token
            logits = torch.stack([out.start_logits, out.end_logits], dim=-1)
        main.append((logits if logits is not None else out.last_hidden_state)[0].float().cpu())
        hidden.append([h[0].float().cpu() for h in out.hidden_states or ()])
    del model
    return _Outputs(main, hidden)


def _prompts(diagnosis, tokenizer_dir: str | None, prompts_file: str | None) -> list[tuple[str, list[int]]]:
    """(label, token ids): the lines of --prompts (text, or whitespace-separated token ids), else the
    built-in texts; and the adapter's new tokens' ids where it grows the vocabulary."""
    tokenizer = _tokenizer(tokenizer_dir or diagnosis.adapter.checkpoint.path, diagnosis.base.path)
    if prompts_file:
        try:
            lines = [ln for ln in Path(prompts_file).read_text(encoding="utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError("Cannot read prompts", prompts_file, str(exc), "Pass a UTF-8 text file, one prompt per line.") from exc
    else:
        lines = list(DEFAULT_TEXTS)
    rows = diagnosis.target.rows or diagnosis.target.base_rows or 2
    out = []
    for line in lines:
        words = line.split()
        if words and all(w.isdigit() for w in words):
            out.append((line[:40], [min(int(w), rows - 1) for w in words]))
        elif tokenizer is not None:
            ids = [i for i in tokenizer(line)["input_ids"] if i < rows]
            out.append((line[:40], ids or [0]))
        elif prompts_file:
            raise UsageError("Cannot tokenize prompts", prompts_file, "a line is text and no tokenizer was found (--tokenizer, the adapter's, the base's)",
                             "Pass --tokenizer DIR, or write each prompt as whitespace-separated token ids.")
    if not out:  # no tokenizer: token ids spread over the old vocabulary
        base_rows = diagnosis.target.base_rows or rows
        out.append((f"ids 0..{base_rows - 1} (every {max(1, base_rows // 16)}th)", list(range(0, base_rows, max(1, base_rows // 16)))))
    target = diagnosis.target
    if target.grows and target.base_rows is not None and target.rows > target.base_rows:
        new = list(range(target.base_rows, min(target.rows, target.base_rows + MAX_NEW_TOKEN_IDS)))
        out.append((f"new token ids {new[0]}..{new[-1]}", [0, *new]))
    return out


def _tokenizer(*folders: str):
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None
    for folder in folders:
        try:
            return AutoTokenizer.from_pretrained(folder)
        except Exception:  # noqa: BLE001 - no tokenizer there (or one transformers cannot read): try the next
            continue
    return None


def _compare(label: str, ids: list[int], a, b, tol: float, head: str) -> PromptResult:
    import torch

    if a is None or b is None or a.shape != b.shape:
        return PromptResult(label, len(ids), math.inf, None, None, False)
    max_abs = _max_abs(a, b)
    if a.dim() == 1:  # a classification head: one row of label logits for the whole sequence
        a, b = a[None], b[None]
    kl = top1 = None
    if head != "hidden-state":
        p, q = torch.log_softmax(a[-1].double(), -1), torch.log_softmax(b[-1].double(), -1)
        kl = float((p.exp() * (p - q)).sum())
        top1 = float((a.argmax(-1) == b.argmax(-1)).double().mean())
    return PromptResult(label, len(ids), max_abs, kl, top1, max_abs <= tol * _scale(a))


def _max_abs(a, b) -> float:
    if a.shape != b.shape:
        return math.inf
    d = (a - b).abs()
    return float(d.max()) if d.numel() else 0.0


def _scale(a) -> float:
    """What the tolerance is relative to: the largest |value| (a model's logits may all be small)."""
    return max(1e-6, float(a.abs().max())) if a.numel() else 1.0


def _first_diverging(a: list, b: list, tol: float) -> str | None:
    """hidden_states[0] is the embeddings' output, [i] layer i - 1's."""
    for i, (x, y) in enumerate(zip(a, b)):
        if _max_abs(x, y) > tol * _scale(x):
            return "embeddings" if i == 0 else f"layer {i - 1}"
    return None


def verdict(result: VerifyResult) -> str:
    """The one-line outcome every format prints."""
    n = len(result.prompts)
    if result.agrees:
        return f"MERGED agrees with PeftModel(BASE, ADAPTER) on {n} prompt{'s' * (n != 1)} (tolerance {result.tolerance:g}, {result.dtype})"
    bad = sum(1 for p in result.prompts if not p.agrees)
    where = f"; first diverging: {result.diverging}" if result.diverging else ""
    noop = "; MERGED computes what BASE computes: a no-op merge" if result.noop else ""
    return f"MERGED differs from PeftModel(BASE, ADAPTER) on {bad} of {n} prompts (tolerance {result.tolerance:g}, {result.dtype}){where}{noop}"


def prompt_cells(p: PromptResult) -> list[str]:
    """prompt, tokens, max |diff|, KL, top-1, verdict: the columns of every format's table."""
    kl = "-" if p.kl is None else f"{p.kl:.3g}"
    top1 = "-" if p.top1 is None else f"{p.top1:.0%}"
    return [p.label, str(p.tokens), f"{p.max_abs:.3g}", kl, top1, "agrees" if p.agrees else "differs"]


PROMPT_COLUMNS = ["prompt", "tokens", "max |diff|", "KL", "top-1", ""]
