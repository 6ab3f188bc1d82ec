"""Vocabulary repair: plan a resize of embedding / lm_head rows and initialize the new rows.

Statistics are computed in fp32, per matrix from that matrix's own old rows (lm_head from
lm_head), seeded; old rows are copied bit-identically. ``hf_mvn`` follows transformers'
``resize_token_embeddings(mean_resizing=True)``; ``subword_mean`` averages the old rows of the
pieces the old tokenizer splits each new token into (Hewitt 2021; the usual vocabulary-expansion
recipe).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from inspector.base import VocabLayout, config_value, vocab_layout
from inspector.errors import InvalidInputError, UsageError
from inspector.io.checkpoint import Checkpoint

_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


@dataclass(frozen=True)
class ResizePlan:
    old_rows: int
    rows: int  # after --pad-to-multiple-of
    requested: int  # before padding
    reason: str  # where the size came from, for the report
    matrices: tuple[str, ...]  # [V, H] tensors resized along dim 0
    biases: tuple[str, ...]  # [V] / [1, V] tensors resized along the last dim
    init: str
    # Rows [fresh_from, old_rows) are padding rows (past the old tokenizer) that new tokens now use:
    # initialized like new rows. old_rows (the default): every existing row is kept.
    fresh_from: int | None = None
    # Matrices whose random new rows are drawn apart from the embedding's (an untied head); every
    # other matrix is a stored copy of the embedding (T5's shared / encoder / decoder) and must stay equal.
    apart: tuple[str, ...] = ()
    # Biases transformers pads with zeros whatever the init: a tied MLM head's (BERT cls.predictions.bias)
    # and BART's final_logits_bias buffer.
    zero_biases: tuple[str, ...] = ()

    @property
    def kept(self) -> int:
        """Rows copied bit-identically from the old matrix."""
        return min(self.old_rows, self.rows, self.fresh_from if self.fresh_from is not None else self.old_rows)

    @property
    def reused_padding(self) -> int:
        """Padding rows of the old matrix that new tokens now use (initialized, not copied)."""
        return max(0, min(self.old_rows, self.requested) - self.kept) if self.fresh_from is not None else 0

    def new_shape(self, shape: tuple[int, ...], name: str) -> tuple[int, ...]:
        if name in self.biases:
            return (*shape[:-1], self.rows)
        return (self.rows, *shape[1:])

    def touches(self, name: str) -> bool:
        return name in self.matrices or name in self.biases


@dataclass
class SubwordPlan:
    """For each new row (in order), the old-vocabulary ids whose rows it averages ([] -> mean)."""

    pieces: list[list[int]]
    fallbacks: int  # new tokens with no usable piece (initialized with the mean)
    byte_only: int  # new tokens whose pieces are all byte-fallback pieces (<0xE6>...)
    padding: int  # rows beyond the new tokenizer's length (padding rows: mean)

    @property
    def tokens(self) -> int:
        return len(self.pieces) - self.padding


@dataclass(frozen=True)
class RowSource:
    """What an initializer may draw new rows from, besides the old rows themselves."""

    seed: int = 0
    initializer_range: float = 0.02
    subword: SubwordPlan | None = None
    bias: bool = False  # a [V] bias viewed as [V, 1]


@dataclass(frozen=True)
class Init:
    """One --init strategy: its rows, and where it can be used."""

    name: str
    help: str
    rows: Callable  # (old32 [n, width], count, RowSource) -> fp32 [count, width]
    for_merge: bool = True  # subword_mean needs the old and the new tokenizer: resize only


def _mean_rows(old32, count: int, src: RowSource):
    return old32.mean(dim=0).expand(count, -1).clone()


def _subword_rows(old32, count: int, src: RowSource):
    rows = _mean_rows(old32, count, src)  # tokens without usable pieces, and padding rows
    if src.subword is not None:
        for i, ids in enumerate(src.subword.pieces[:count]):
            if ids:
                rows[i] = old32[ids].mean(dim=0)
    return rows


def _hf_mvn_rows(old32, count: int, src: RowSource):
    import torch

    if src.bias:  # transformers: normal(mean, 1e-9 * std) for the lm_head bias
        return old32.mean(dim=0) + 1e-9 * old32.std(dim=0) * torch.randn((count, old32.shape[1]), generator=_seeded(src.seed))
    return mvn_rows(old32, count, src.seed)


def _normal_rows(old32, count: int, src: RowSource):
    import torch

    if src.bias:
        return old32.new_zeros((count, old32.shape[1]))  # transformers' _init_weights zeroes Linear biases
    return torch.randn((count, old32.shape[1]), generator=_seeded(src.seed)) * src.initializer_range


def _zero_rows(old32, count: int, src: RowSource):
    return old32.new_zeros((count, old32.shape[1]))


# The one table of --init strategies: the CLI's choices, the merge's, the reports' and the docs' names.
INITS: dict[str, Init] = {i.name: i for i in (
    Init("subword_mean", "mean of the old rows of the pieces the old tokenizer splits each new token into", _subword_rows, for_merge=False),
    Init("mean", "mean of the old rows (transformers' resize_token_embeddings without its 1e-9 noise)", _mean_rows),
    Init("hf_mvn", "transformers' mean_resizing: N(mean, 1e-9 x covariance), seeded", _hf_mvn_rows),
    Init("normal", "N(0, initializer_range), seeded (older transformers)", _normal_rows),
    Init("zero", "zeros", _zero_rows),
)}  # fmt: skip
MERGE_INITS = tuple(name for name, init in INITS.items() if init.for_merge)
DEFAULT_MERGE_INIT = "mean"


@dataclass
class MatrixResult:
    name: str
    old_shape: tuple[int, ...]
    new_shape: tuple[int, ...]
    init: str


@dataclass
class ResizeResult:
    out: Path
    plan: ResizePlan
    matrices: list[MatrixResult] = field(default_factory=list)
    subword: SubwordPlan | None = None
    tokenizer_from: str | None = None
    warnings: list[str] = field(default_factory=list)


def padded(rows: int, multiple: int | None) -> int:
    if not multiple:
        return rows
    return -(-rows // multiple) * multiple


def plan_resize(base: Checkpoint, rows: int, reason: str, init: str, pad_to: int | None = None) -> ResizePlan:
    """Which tensors change and to what size; refuses bases whose vocabulary cannot be found."""
    layout: VocabLayout = vocab_layout(base)
    if layout.rows is None or not layout.embeddings:
        raise UsageError("Cannot resize", base.path, "no vocabulary embedding found (no 2-D tensor with config.vocab_size rows)", "Check the base with `lora-inspector scan BASE --tensors`.")
    if rows <= 0:
        raise UsageError("Cannot resize", base.path, f"the target vocabulary size {rows} is not positive", "Pass --vocab N with N > 0.")
    if pad_to is not None and pad_to <= 0:
        raise UsageError("Invalid --pad-to-multiple-of", None, f"{pad_to} is not a positive integer", "Pass e.g. --pad-to-multiple-of 64.")
    return ResizePlan(layout.rows, padded(rows, pad_to), rows, reason, layout.matrices, layout.biases, init, **draw_rules(layout, base.config))


def draw_rules(layout: VocabLayout, config: dict) -> dict:
    """ResizePlan's ``apart`` and ``zero_biases`` for a base, as transformers' resize_token_embeddings
    treats it: heads are sampled apart only when the config unties them; a tied head's bias pads with 0."""
    untied = config_value(config, "tie_word_embeddings") is False
    return {"apart": layout.heads if untied else (),
            "zero_biases": tuple(b for b in layout.biases if b.endswith("final_logits_bias") or layout.tied)}


# -- new-row initializers ------------------------------------------------------------------------


def _seeded(seed: int):
    import torch

    return torch.Generator().manual_seed(seed)


def mvn_rows(old32, count: int, seed: int):
    """transformers' mean_resizing: N(mean, 1e-9 * cov) when that is positive definite, else the mean."""
    import torch
    from torch.distributions import constraints
    from torch.distributions.multivariate_normal import MultivariateNormal

    mean = old32.mean(dim=0)
    centered = old32 - mean
    covariance = centered.T @ centered / old32.shape[0]
    if constraints.positive_definite.check(1e-9 * covariance).all():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return MultivariateNormal(mean, covariance_matrix=1e-9 * covariance).sample((count,))
    return mean.expand(count, -1).clone()


def new_rows(old, count: int, init: str, *, seed: int = 0, initializer_range: float = 0.02, subword: SubwordPlan | None = None, bias: bool = False):
    """``count`` new rows (fp32) for the matrix (or 1-D bias) ``old``, by the --init strategy ``init``."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}")
    old32 = old.float() if not bias else old.float().reshape(-1, 1)
    if count <= 0:
        return old32.new_zeros((0, old32.shape[1])) if not bias else old32.new_zeros((0,))
    rows = INITS[init].rows(old32, count, RowSource(seed, initializer_range, subword, bias))
    return rows.reshape(-1) if bias else rows


def subword_pieces(old_dir: Path, new_dir: Path, old_rows: int, new_rows_: int) -> SubwordPlan:
    """Split each new token's text with the old tokenizer (no special tokens, unknown pieces dropped)."""
    from inspector.interrupts import held

    toks = []
    for directory in (old_dir, new_dir):
        try:
            # Held: transformers imports the tokenizer's modules lazily, here (see inspector/interrupts.py).
            with held():
                from transformers import AutoTokenizer
                from transformers.utils import logging as hf_logging

                hf_logging.set_verbosity_error()
                toks.append(AutoTokenizer.from_pretrained(str(directory), trust_remote_code=False))  # never code from the files
        except Exception as exc:  # transformers raises anything from KeyError to OSError on broken files
            raise InvalidInputError("Cannot load tokenizer", directory, f"transformers could not load it ({type(exc).__name__}: {exc})",
                                    "Re-save it with tokenizer.save_pretrained(), or use --init mean (no tokenizer needed).") from exc
    old_tok, new_tok = toks
    unk = old_tok.unk_token_id
    old_vocab = old_tok.convert_ids_to_tokens(list(range(min(len(old_tok), old_rows))))
    byte_ids = {i for i, t in enumerate(old_vocab) if t and _BYTE_PIECE.match(t)}
    # Sentencepiece-style tokenizers put the word-boundary marker before the bytes ("心" -> "▁",
    # <0xE5>, <0xBF>, <0x83>); a lone marker carries no meaning, so it does not count against byte-only.
    marker_ids = {i for i, t in enumerate(old_vocab) if t == "\u2581"}
    pieces: list[list[int]] = []
    fallbacks = byte_only = 0
    limit = min(len(new_tok), new_rows_)
    added = new_tok.added_tokens_decoder  # id -> AddedToken: its content is the text itself
    for token_id in range(old_rows, limit):
        token = new_tok.convert_ids_to_tokens(token_id)
        if token_id in added:
            # Not through the decoder: a byte-level one (GPT-2, Qwen2) would read "é" in the content as
            # a byte symbol and turn "Ménière" into "M\ufffdni\ufffdre".
            text = added[token_id].content
        else:
            text = new_tok.convert_tokens_to_string([token]) if token is not None else ""
        ids = [i for i in old_tok(text, add_special_tokens=False)["input_ids"] if i != unk and 0 <= i < old_rows] if text else []
        if not ids:
            fallbacks += 1
        elif any(i in byte_ids for i in ids) and all(i in byte_ids or i in marker_ids for i in ids):
            byte_only += 1
        pieces.append(ids)
    padding = max(0, new_rows_ - max(limit, old_rows))
    pieces += [[] for _ in range(padding)]
    return SubwordPlan(pieces, fallbacks, byte_only, padding)


def initializer_range(config: dict) -> float:
    value = config_value(config, "initializer_range", "init_std")
    return float(value) if isinstance(value, (int, float)) else 0.02


def updated_config(config: dict, rows: int) -> dict:
    """config.json with vocab_size set (in text_config too, where the text model keeps it)."""
    new = dict(config)
    if "vocab_size" in new or not isinstance(new.get("text_config"), dict):
        new["vocab_size"] = rows
    if isinstance(new.get("text_config"), dict) and "vocab_size" in new["text_config"]:
        new["text_config"] = {**new["text_config"], "vocab_size": rows}
    return new


def grow(old, plan: ResizePlan, name: str, *, seed: int, init_range: float, subword: SubwordPlan | None):
    """The resized tensor: the kept old rows bit-identical, then ``plan.init`` rows (new tokens, and
    padding rows new tokens now use), then mean padding rows. Statistics come from the kept rows."""
    import torch

    kept = plan.kept
    # An untied head draws its own random rows, as transformers samples it apart from the embedding;
    # stored copies of one tied weight (T5's shared / encoder / decoder embed_tokens) draw the same.
    seed = seed + zlib.crc32(name.encode()) if name in plan.apart else seed
    bias = name in plan.biases
    if bias:
        flat = old.reshape(-1)
        if plan.rows <= kept:
            return flat[: plan.rows].reshape(plan.new_shape(old.shape, name)).clone()
        # Zeros where transformers pads with zeros whatever --init says (zero_biases).
        zero = name in plan.zero_biases
        base = flat[:kept]
        added = new_rows(base, max(0, plan.requested - kept), "zero" if zero else plan.init, seed=seed, initializer_range=init_range, subword=subword, bias=True)
        pad = new_rows(base, plan.rows - max(plan.requested, kept), "zero" if zero else "mean", bias=True)
        return torch.cat([base, added.to(old.dtype), pad.to(old.dtype)]).reshape(plan.new_shape(old.shape, name))
    if plan.rows <= kept:
        return old[: plan.rows].clone()
    base = old[:kept]
    added = new_rows(base, max(0, plan.requested - kept), plan.init, seed=seed, initializer_range=init_range, subword=subword)
    pad = new_rows(base, plan.rows - max(plan.requested, kept), "mean")
    return torch.cat([base, added.to(old.dtype), pad.to(old.dtype)])
