"""``check``: read both checkpoints, pick the tokenizer, diagnose."""

from __future__ import annotations

from inspector.adapter import foreign_lora, read_adapter
from inspector.checkpoint import NATIVE_FORMAT_HINT, Checkpoint, read_checkpoint
from inspector.diagnose import Diagnosis, diagnose
from inspector.errors import UsageError
from inspector.paths import locate
from inspector.tokenizer import read_tokenizer
from inspector.units import printable


def run_check(base_path: str | Checkpoint, adapter_path: str, tokenizer_dir: str | None = None, *, command: str = "check") -> Diagnosis:
    """Read BASE (unless already read) and ADAPTER (headers only) and diagnose them.

    The tokenizer is ``tokenizer_dir`` if given, else the adapter directory's (where training
    scripts save the extended tokenizer), else the base directory's. ``command`` words the usage
    errors for the command that asked (``resize --like`` has no ADAPTER argument).
    """
    base = base_path if isinstance(base_path, Checkpoint) else read_checkpoint(base_path)
    adapter = read_checkpoint(adapter_path)
    label = "--like ADAPTER" if command == "resize" else "ADAPTER"
    for ckpt, role in ((base, "BASE"), (adapter, label)):
        foreign = foreign_lora(ckpt)
        if foreign is not None:
            raise UsageError("Not a PEFT checkpoint", ckpt.path, f"{role} is {foreign[0]}", foreign[1])
    if base.kind == "adapter" and adapter.kind == "model" and command != "resize":
        raise UsageError("Arguments swapped", base.path, f"BASE is a PEFT adapter and {label} is a model", f"Run `lora-inspector {command} {adapter_path} {base.path}{'' if command == 'check' else ' --out DIR'}`.")
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
    if tokenizer_dir is not None:
        folder = locate(tokenizer_dir)
        if not folder.is_dir():
            raise UsageError("Cannot read tokenizer", tokenizer_dir, "not a directory", "Pass the directory tokenizer.save_pretrained() wrote.")
        tokenizer = read_tokenizer(folder)
        if tokenizer is None:
            raise UsageError("Cannot read tokenizer", tokenizer_dir, "no tokenizer.json, tokenizer.model, vocab.txt or vocab.json in it", "Pass the directory tokenizer.save_pretrained() wrote.")
    else:
        tokenizer = adapter.tokenizer or base.tokenizer
    return diagnose(base, read_adapter(adapter), tokenizer)
