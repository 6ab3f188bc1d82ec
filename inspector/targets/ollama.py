"""Ollama's LoRA serving rules (ADAPTER in a Modelfile, safetensors), read at Ollama v0.33.0-rc2.

``ollama create`` converts a safetensors adapter (convert/convert.go ConvertAdapter) for a llama or
gemma2 base only: it renames every tensor (``model.layers`` -> ``blk``, ``self_attn.q_proj`` ->
``attn_q``, ``lora_A.weight`` -> ``weight.lora_a``, ...), keeps all of them, and writes lora_alpha.
The model is then served by llama.cpp's llama-server (llm/llama_server.go passes ``--lora``; the
version pinned in LLAMA_CPP_VERSION is b10488), which refuses a tensor whose name does not end in
``.lora_a`` / ``.lora_b`` / ``_norm.weight`` and scales each pair by alpha / rank. One adapter per
model (server/create.go: "only one adapter is currently supported").
"""

from __future__ import annotations

from inspector.findings import Code
from inspector.targets import facts as f
from inspector.targets.architectures import OLLAMA_ADAPTER_ARCHITECTURES
from inspector.targets.rule import Rule, Target

V = "v0.33.0-rc2"
RT = "llama.cpp 0c1e57098"  # the runtime's adapter loader as read (unchanged b4747..0c1e57098; Ollama pins b10488)
MERGE = "Serve the merged model instead: `lora-inspector merge {base} {adapter} --out merged`, then `ollama create` from merged/."
UNEXPECTED = "llama-server refuses the adapter: \"LoRA tensor '...' has unexpected suffix\""
# The module paths llamaAdapter / gemma2Adapter.Replacements map to GGUF tensor names.
PATHS = r"model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj)|mlp\.(gate_proj|up_proj|down_proj))"

TARGET = Target("ollama", "Ollama", f"Ollama {V} (convert/, server/create.go, llm/llama_server.go); runtime {RT}", (
    Rule(Code.SERVE_METHOD, f.method_is_not("LORA"), "refused",
         "converts LoRA adapters only; a {peft_type} adapter's tensors are no lora_a / lora_b pair (\"has unexpected suffix\").",
         MERGE, f"convert/convert.go ConvertAdapter ({V}), src/llama-adapter.cpp ({RT})"),
    Rule(Code.SERVE_ARCHITECTURE, f.architecture_not_in(OLLAMA_ADAPTER_ARCHITECTURES), "refused",
         "\"unsupported architecture\": Ollama converts safetensors adapters for llama and gemma2 bases only, not {architecture}.",
         MERGE, f"convert/convert.go ConvertAdapter ({V})"),
    Rule(Code.SERVE_TARGET_MODULE, f.lora_on_paths_other_than(PATHS), "refused",
         "renames only model.layers.N.self_attn.{{q,k,v,o}}_proj and mlp.{{gate,up,down}}_proj to GGUF names; the LoRA on {modules} "
         "keeps its name and llama-server refuses it (\"LoRA tensor '...' does not exist in base model\").",
         MERGE, f"convert/convert_llama_adapter.go, convert_gemma2_adapter.go Replacements ({V}), src/llama-adapter.cpp ({RT})"),
    Rule(Code.SERVE_EMBEDDING_LORA, f.has_embedding_lora, "refused",
         "converts no embedding or output-layer LoRA: the LoRA on {modules} keeps its name and llama-server refuses it.",
         MERGE, f"convert/convert_llama_adapter.go Replacements ({V}), src/llama-adapter.cpp ({RT})"),
    Rule(Code.SERVE_MODULES_TO_SAVE, f.has_full_weights, "refused",
         f"converts the full weights {{modules}} as they are and {UNEXPECTED}.",
         MERGE, f"convert/convert.go ConvertAdapter ({V}), src/llama-adapter.cpp llama_adapter_lora_init_impl ({RT})"),
    Rule(Code.SERVE_MODULES_TO_SAVE, f.has_base_layer_copies(), "refused",
         f"converts the frozen copies {{keys}} as they are and {UNEXPECTED}.",
         "`lora-inspector convert {adapter} --for ollama --out converted` drops copies equal to the base's weights (lossless; one that differs is what PEFT computes with: merge instead); use converted/ as ADAPTER.",
         f"convert/convert.go ConvertAdapter ({V}), src/llama-adapter.cpp llama_adapter_lora_init_impl ({RT})"),
    Rule(Code.SERVE_VOCABULARY, f.changes_vocabulary, "refused",
         "the adapter's vocabulary has {rows} rows, the base's {base_rows}: an adapter GGUF carries no embedding rows or tokens "
         "(a full embedding \"has unexpected suffix\").",
         MERGE, f"convert/convert.go ConvertAdapter ({V}), src/llama-adapter.cpp ({RT})"),
    Rule(Code.SERVE_DORA, f.uses_dora, "refused", f"refuses DoRA: lora_magnitude_vector is converted as it is and {UNEXPECTED}.",
         MERGE, f"convert/convert.go ConvertAdapter ({V}), src/llama-adapter.cpp ({RT})"),
    Rule(Code.SERVE_LORA_BIAS, f.uses_lora_bias, "refused", f"refuses lora_bias: lora_B.bias is converted as it is and {UNEXPECTED}.",
         MERGE, f"convert/convert_llama_adapter.go Replacements ({V}), src/llama-adapter.cpp ({RT})"),
    Rule(Code.SERVE_TRAINABLE_TOKENS, f.uses_trainable_tokens, "refused",
         f"refuses trainable tokens: trainable_tokens_delta is converted as it is and {UNEXPECTED}.",
         MERGE, f"convert/convert.go ConvertAdapter ({V}), src/llama-adapter.cpp ({RT})"),
    Rule(Code.SERVE_SCALING, f.uses_rslora, "diverges",
         "writes lora_alpha, and llama-server scales by alpha / rank, not rsLoRA's alpha / sqrt(rank): every update is sqrt({r}) times too weak.",
         "`lora-inspector convert {adapter} --for ollama --out converted` folds the scaling into lora_B (lossless); use converted/ as ADAPTER.",
         f"convert/convert.go AdapterParameters.KV ({V}), src/llama-adapter.h get_scale ({RT})"),
    Rule(Code.SERVE_SCALING, f.uses_alpha_pattern, "diverges",
         "writes one lora_alpha for the whole adapter: alpha_pattern is ignored.",
         "`lora-inspector convert {adapter} --for ollama --out converted` folds the scaling into lora_B (lossless); use converted/ as ADAPTER.",
         f"convert/convert.go AdapterParameters.KV ({V}), src/llama-adapter.h get_scale ({RT})"),
))
