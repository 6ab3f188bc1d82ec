"""The standard PEFT merge path, as users run it (docs/design.md, "Performance targets": the reference figures).

    python bench/peft_merge.py BASE ADAPTER OUT [--vocab 70840] [--device cpu|cuda] [--mean-resizing]

  AutoModelForCausalLM.from_pretrained(BASE, dtype=bfloat16)
  model.resize_token_embeddings(VOCAB, mean_resizing=False)  # else PeftModel.from_pretrained dies with "size mismatch"
  model.to("cuda")                                # --device cuda only
  PeftModel.from_pretrained(model, ADAPTER).merge_and_unload()
  model.save_pretrained(OUT)

``--vocab`` defaults to the rows of the adapter's saved embedding (read from its safetensors header),
which is what a user resizes to. bench/merge_bench.py runs this as a subprocess and measures it.

``mean_resizing=False`` unless ``--mean-resizing``: transformers' default (True) samples the new rows
from a multivariate normal with torch's batched mat-vec (one [H, H] @ [H] product per new row), which
on the 2-core reference machine costs ~170 s per matrix for the 473 MB case (368 s for the whole path
instead of ~8-10 s), and those rows are overwritten by the adapter's modules_to_save copies anyway.
The default here is the fastest way to run the standard path, so ratios against it are conservative.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import warnings
from pathlib import Path


def adapter_rows(adapter: Path) -> int:
    """Rows of the largest embedding-like matrix the adapter saves (its embed_tokens copy)."""
    with open(adapter / "adapter_model.safetensors", "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    rows = [v["shape"][0] for k, v in header.items() if k != "__metadata__" and "embed_tokens" in k and len(v["shape"]) == 2]
    if not rows:
        raise SystemExit(f"{adapter}: no embed_tokens matrix in the adapter; pass --vocab")
    return max(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base", type=Path)
    ap.add_argument("adapter", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--vocab", type=int, help="resize_token_embeddings to this (default: the adapter's embedding rows)")
    ap.add_argument("--mean-resizing", action="store_true", help="transformers' default new-row init (very slow on CPU, see above)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda: the model is moved to the GPU before PEFT loads and merges")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    vocab = args.vocab or adapter_rows(args.adapter)
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.bfloat16)
    model.resize_token_embeddings(vocab, mean_resizing=args.mean_resizing)
    if args.device != "cpu":
        model.to(args.device)
    model = PeftModel.from_pretrained(model, args.adapter)
    model = model.merge_and_unload()
    model.save_pretrained(args.out)
    if args.device != "cpu":
        torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
