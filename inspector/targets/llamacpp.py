"""llama.cpp's LoRA serving rules: convert_lora_to_gguf.py, then the runtime (llama-server --lora).

Read at llama.cpp commit 0c1e57098 (as vendored by llama-cpp-python 0.3.36; docs/targets.md); the
messages quoted are the same at b4747. The converter keeps lora_A / lora_B (and lora_embedding_A /
_B) pairs, skips ``.base_layer.weight`` copies, keeps norms, and exits on any other tensor. The
GGUF adapter stores one lora_alpha; the runtime scales each pair by alpha / rank, the rank read from
the tensor (llama_adapter_lora_weight::get_scale), so rank_pattern is served as PEFT computes it.
"""

from __future__ import annotations

from inspector.findings import Code
from inspector.targets import facts as f
from inspector.targets.architectures import LLAMACPP_CONVERTIBLE
from inspector.targets.rule import Rule, Target

V = "0c1e57098"
MERGE = "Serve the merged model instead: `lora-inspector merge {base} {adapter} --out merged`, then convert_hf_to_gguf.py."
CONVERT = "`lora-inspector convert {adapter} --for llamacpp --out converted` folds the scaling into lora_B (lossless); convert that one."
NORM = r"_layernorm|\.norm"  # full weights the converter keeps (mergekit-extract-lora's norms) and the runtime skips

TARGET = Target("llamacpp", "llama.cpp", f"llama.cpp {V} (llama-cpp-python 0.3.36's vendored copy); messages unchanged since b4747", (
    Rule(Code.SERVE_METHOD, f.method_is_not("LORA"), "refused",
         "converts LoRA adapters only: a {peft_type} adapter has no lora_A / lora_B tensors (\"Unexpected name '...': Not a lora_A or lora_B tensor\").",
         MERGE, f"convert_lora_to_gguf.py LoraModel.get_tensors ({V})"),
    Rule(Code.SERVE_ARCHITECTURE, f.architecture_not_in(LLAMACPP_CONVERTIBLE), "refused",
         "cannot convert an adapter for {architecture}: \"Model {architecture} is not supported\" (the converter uses the base's model class).",
         MERGE, f"convert_lora_to_gguf.py main, conversion/base.py ModelBase.from_model_architecture ({V})"),
    Rule(Code.SERVE_MODULES_TO_SAVE, f.full_weights_matching(NORM, invert=True), "refused",
         "\"Unexpected name '...': Not a lora_A or lora_B tensor\" for the full weights {modules} (\"Embeddings is present in the adapter\" for embed_tokens / lm_head).",
         MERGE, f"convert_lora_to_gguf.py LoraModel.get_tensors ({V})"),
    Rule(Code.SERVE_MODULES_TO_SAVE, f.full_weights_matching(NORM), "diverges",
         "converts the norm weights {modules} but the runtime skips every \"_norm.weight\" adapter tensor: the base's norms serve.",
         MERGE, f"convert_lora_to_gguf.py LoraModel.get_tensors, src/llama-adapter.cpp llama_adapter_lora_init_impl ({V})"),
    Rule(Code.SERVE_VOCABULARY, f.changes_vocabulary, "refused",
         "the adapter's vocabulary has {rows} rows, the base GGUF's {base_rows}: full embeddings are \"Unexpected name\" "
         "(\"Embeddings is present in the adapter. This can be due to new tokens added during fine tuning\"), and an embedding LoRA "
         "of another vocabulary does not fit token_embd.",
         MERGE, f"convert_lora_to_gguf.py LoraModel.get_tensors, src/llama-adapter.cpp ({V})"),
    Rule(Code.SERVE_DORA, f.uses_dora, "refused",
         "refuses DoRA: lora_magnitude_vector is \"Unexpected name '...': Not a lora_A or lora_B tensor\".",
         MERGE, f"convert_lora_to_gguf.py LoraModel.get_tensors ({V})"),
    Rule(Code.SERVE_LORA_BIAS, f.uses_lora_bias, "refused",
         "refuses lora_bias: lora_B.bias is \"Unexpected name '...': Not a lora_A or lora_B tensor\".",
         MERGE, f"convert_lora_to_gguf.py LoraModel.get_tensors ({V})"),
    Rule(Code.SERVE_TRAINABLE_TOKENS, f.uses_trainable_tokens, "refused",
         "refuses trainable tokens: trainable_tokens_delta is \"Unexpected name '...': Not a lora_A or lora_B tensor\".",
         MERGE, f"convert_lora_to_gguf.py LoraModel.get_tensors ({V})"),
    Rule(Code.SERVE_SCALING, f.uses_rslora, "diverges",
         "writes lora_alpha and scales by alpha / rank at run time, not rsLoRA's alpha / sqrt(rank): every update is sqrt({r}) times too weak.",
         CONVERT, f"convert_lora_to_gguf.py LoraModel.set_gguf_parameters, src/llama-adapter.h get_scale ({V})"),
    Rule(Code.SERVE_SCALING, f.uses_alpha_pattern, "diverges",
         "writes one lora_alpha for the whole adapter: alpha_pattern is ignored.",
         CONVERT, f"convert_lora_to_gguf.py LoraModel.set_gguf_parameters, src/llama-adapter.h get_scale ({V})"),
    Rule(Code.SERVE_EMBEDDING_LORA, f.has_tied_head_lora, "refused",
         "the base ties its output layer to the embedding, so the GGUF has no output tensor for the LoRA on {modules}: \"lm_head is "
         "present in adapter, but is ignored in base model\" or \"LoRA tensor 'output.weight' does not exist in base model\".",
         MERGE, f"convert_lora_to_gguf.py LoraModel.modify_tensors, src/llama-adapter.cpp llama_adapter_lora_init_impl ({V})"),
))
