"""Builders and references for ``merge`` tests.

The reference for every merge is PEFT's own path on the torch model: load the base with
transformers, grow the vocabulary first when the adapter implies more rows, ``PeftModel.from_pretrained``,
``merge_and_unload``. Two deliberate adjustments keep that reference comparable with the spec:

- grown rows that nobody carries: transformers' ``resize_token_embeddings`` fills them with the old
  rows' mean plus 1e-9-scaled noise; the reference sets them to the exact fp32 mean (lora-inspector's
  ``--init mean``, the merge's default). Rows the adapter carries overwrite them in both paths alike.
- a tied base whose embedding (or head) the adapter changes with LoRA: PEFT merges into the shared
  weight and so changes the other side too, which is not what the PeftModel computed; lora-inspector
  unties (writes both, ``tie_word_embeddings: false``). The reference then unties the PEFT model
  (a clone of the shared weight for the head) *before* merging, so it equals the PeftModel's outputs.
  For modules_to_save PEFT unties by itself and the reference is PEFT's merge unchanged.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, PreTrainedModel

from tests.check_cases import edit_tensors

# Per-dtype tolerances for merged tensors: PEFT adds the delta in the base dtype, lora-inspector in
# fp32 and rounds once, so low-precision results may differ by about one unit in the last place.
TENSOR_TOL = {
    torch.float32: dict(atol=1e-6, rtol=0.0),
    torch.bfloat16: dict(atol=1e-2, rtol=1.6e-2),
    torch.float16: dict(atol=1e-3, rtol=1e-3),
}
LOGIT_TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=5e-2, rtol=5e-2),
    torch.float16: dict(atol=5e-3, rtol=5e-3),
}
# Device merges (cuda) against PEFT on the CPU: fp32 matmuls may take another summation order.
DEVICE_TENSOR_TOL = {**TENSOR_TOL, torch.float32: dict(atol=1e-5, rtol=1e-5)}


def auto_class(model_dir: Path) -> type:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    arch = (config.get("architectures") or [""])[0]
    if arch.endswith("ForCausalLM") or arch.endswith("LMHeadModel"):
        return AutoModelForCausalLM
    if arch.endswith("ForMaskedLM"):
        return AutoModelForMaskedLM
    return AutoModel


def load(model_dir: Path, dtype: torch.dtype | None = None, *, strict: bool = False) -> PreTrainedModel:
    """A checkpoint loaded by transformers; ``strict``: every tensor it needs was in the files."""
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model, info = auto_class(model_dir).from_pretrained(model_dir, output_loading_info=True, **kwargs)
    if strict:
        assert not info["missing_keys"], f"transformers found no tensor for {sorted(info['missing_keys'])}"
        assert not info["unexpected_keys"], f"transformers did not use {sorted(info['unexpected_keys'])}"
        assert not info.get("mismatched_keys"), f"shape mismatches: {info['mismatched_keys']}"
    return model.eval()


def resize_to_mean(model: PreTrainedModel, rows: int) -> None:
    """``resize_token_embeddings(rows)`` with the new rows set to the exact fp32 mean of the old ones."""
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(rows, mean_resizing=False)
    with torch.no_grad():
        layers = {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None}
        for layer in layers.values():
            w = layer.weight
            if w.shape[0] > old:
                w[old:] = w[:old].float().mean(dim=0).to(w.dtype)


def untie(model) -> None:
    """Untie as transformers does for ``tie_word_embeddings: false`` (a PeftModel before merging, or a
    merged model): every parameter that a second module shares (the head's weight, BERT's decoder
    bias) becomes that module's own copy."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    owner: dict[int, torch.nn.Module] = {}
    for _, module in base.named_modules(remove_duplicate=False):
        for pname, param in list(module._parameters.items()):
            if param is None:
                continue
            if owner.setdefault(id(param), module) is not module:
                setattr(module, pname, torch.nn.Parameter(param.detach().clone(), requires_grad=False))
    base.config.tie_word_embeddings = False


def peft_reference(base_dir: Path, adapter_dir: Path, *, rows: int | None = None, untie_first: bool = False, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """PEFT's merge: base (grown to ``rows`` first), PeftModel.from_pretrained, merge_and_unload."""
    from peft import PeftModel

    model = load(base_dir, dtype)
    if rows is not None and rows != model.get_input_embeddings().weight.shape[0]:
        resize_to_mean(model, rows)
    peft_model = PeftModel.from_pretrained(model, adapter_dir)
    if untie_first:
        untie(peft_model)
    return peft_model.merge_and_unload().eval()


def read_merged(out_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a written checkpoint, through its index when sharded."""
    out_dir = Path(out_dir)
    index = out_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(str(out_dir / name), "pt") as fh:
            assert fh.metadata() == {"format": "pt"}
            for key in fh.keys():
                assert key not in tensors, f"{key} is stored twice"
                tensors[key] = fh.get_tensor(key)
    return tensors


def header_dtypes(out_dir: Path) -> dict[str, str]:
    """name -> safetensors dtype string, read from the headers of every shard."""
    out: dict[str, str] = {}
    for path in sorted(Path(out_dir).glob("*.safetensors")):
        raw = path.read_bytes()
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + n])
        out.update({k: v["dtype"] for k, v in header.items() if k != "__metadata__"})
    return out


def assert_same_tensors(ours: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], tol: dict = TENSOR_TOL) -> None:
    """The same keys, shapes and dtypes, and values within the dtype's tolerance."""
    assert sorted(ours) == sorted(ref), f"only ours: {sorted(set(ours) - set(ref))}; only PEFT's: {sorted(set(ref) - set(ours))}"
    for key, expected in ref.items():
        got = ours[key]
        assert got.shape == expected.shape, f"{key}: {tuple(got.shape)} vs PEFT's {tuple(expected.shape)}"
        assert got.dtype == expected.dtype, f"{key}: {got.dtype} vs PEFT's {expected.dtype}"
        if got.is_floating_point():
            torch.testing.assert_close(got, expected, **tol[expected.dtype], msg=lambda m, k=key: f"{k}: {m}")
        else:
            assert torch.equal(got, expected), key


def model_output(model: PreTrainedModel, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]))
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def sample_ids(rows: int, base_rows: int) -> list[int]:
    """A fixed input that touches old rows, and new rows when the vocabulary grew."""
    ids = [1, 5, 17, 42, 7, 3, min(63, base_rows - 1)]
    if rows > base_rows:
        ids += [base_rows, (base_rows + rows) // 2, rows - 1]
    return ids


def copy_without(src: Path, dst: Path, *names: str) -> Path:
    """A copy of a directory without some of its files (tokenizer files, say)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*names))
    return Path(dst)


def drop_keys(src: Path, dst: Path, *suffixes: str) -> Path:
    """A copy of adapter ``src`` without the saved keys that end with one of ``suffixes`` (each must match)."""

    def edit(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        for suffix in suffixes:
            hits = [k for k in tensors if k.endswith(suffix)]
            assert hits, f"PEFT saved no key ending in {suffix}"
            for k in hits:
                del tensors[k]
        return tensors

    return edit_tensors(src, dst, edit)


def make_mlm_adapter(model_dir: Path, out_dir: Path, *, seed: int = 0, **lora_kwargs) -> Path:
    """``tests.models.make_lora_adapter`` for a ``*ForMaskedLM`` base (its loader picks ``AutoModel``)."""
    from tests.models import save_trained_adapter

    torch.manual_seed(seed)
    save_trained_adapter(AutoModelForMaskedLM.from_pretrained(model_dir), out_dir, **lora_kwargs)
    return Path(out_dir)
