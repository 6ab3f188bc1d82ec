"""vLLM's LoRA serving rules, read in vLLM v0.34.0 (the PyPI wheel; docs/targets.md).

vLLM validates adapter_config.json (PEFTHelper.validate_legal) before it reads a tensor, then loads
only lora_A / lora_B / lora_embedding_A / lora_embedding_B keys (parse_fine_tuned_lora_name raises
"... is unsupported LoRA weight" for any other key but the embeddings' base_layer copies). rsLoRA,
rank_pattern and alpha_pattern are computed as PEFT does (PEFTHelper.get_rank_and_scaling), and LoRA
on embed_tokens / lm_head is served when the vocabulary is the base's.
"""

from __future__ import annotations

from inspector.findings import Code
from inspector.targets import facts as f
from inspector.targets.architectures import VLLM_WITHOUT_LORA
from inspector.targets.rule import Rule, Target

V = "v0.34.0"
MERGE = "Serve the merged model instead: `lora-inspector merge {base} {adapter} --out merged`."
CONVERT = "`lora-inspector convert {adapter} --for vllm --out converted` drops copies equal to the base's weights (lossless; one that differs is what PEFT computes with: merge instead); serve converted/."

# --max-lora-rank takes one of these (vllm/config/lora.py MaxLoRARanks); the default is 16.
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_MAX_LORA_RANK = 16

TARGET = Target("vllm", "vLLM", f"vLLM {V} (PyPI wheel vllm-0.34.0)", (
    Rule(Code.SERVE_METHOD, f.method_is_not("LORA"), "refused",
         "serves LoRA adapters only; a {peft_type} adapter_config.json lacks lora_alpha or r (\"Missing required configuration fields\") "
         "or its tensors are not lora_A / lora_B (\"... is unsupported LoRA weight\").",
         MERGE, f"vllm/lora/peft_helper.py PEFTHelper.from_dict, vllm/lora/utils.py parse_fine_tuned_lora_name ({V})"),
    Rule(Code.SERVE_ARCHITECTURE, f.architecture_in(VLLM_WITHOUT_LORA), "refused",
         "its {architecture} class does not implement LoRA (\"Model ... is not supported for LoRA.\").",
         "`--model-impl transformers` runs the model on vLLM's Transformers backend, which supports LoRA where the Transformers "
         "class supports vLLM's attention interface; else serve the merged model: `lora-inspector merge {base} {adapter} --out merged`.",
         f"vllm/lora/model_manager.py create_lora_manager, vllm/model_executor/models/registry.py ({V})"),
    Rule(Code.SERVE_RANK, f.rank_needs_flag(DEFAULT_MAX_LORA_RANK, MAX_LORA_RANKS), "flag",
         "\"LoRA rank {rank} is greater than max_lora_rank {limit}.\" ({limit} is the default --max-lora-rank).",
         "Start vLLM with `--max-lora-rank {value}` (the smallest allowed value that fits; allowed: 1, 8, 16, 32, 64, 128, 256, 320, 512).",
         f"vllm/lora/peft_helper.py PEFTHelper.validate_legal, vllm/config/lora.py MaxLoRARanks ({V})"),
    Rule(Code.SERVE_RANK, f.rank_above(max(MAX_LORA_RANKS)), "refused",
         "\"LoRA rank {rank} is greater than max_lora_rank {limit}.\" ({limit} is the largest --max-lora-rank accepts).",
         MERGE, f"vllm/lora/peft_helper.py PEFTHelper.validate_legal, vllm/config/lora.py MaxLoRARanks ({V})"),
    Rule(Code.SERVE_MODULES_TO_SAVE, f.full_weights_matching(r"(^|\.)(classifier|score)(\.|$)", invert=True), "refused",
         'refuses full weights ({modules}): "vLLM only supports modules_to_save being either None or ["classifier", "score"] for '
         'classification models", and a saved full weight is "unsupported LoRA weight".',
         MERGE, f"vllm/lora/peft_helper.py PEFTHelper._validate_features, vllm/lora/utils.py parse_fine_tuned_lora_name ({V})"),
    Rule(Code.SERVE_MODULES_TO_SAVE, f.has_base_layer_copies(except_suffixes=(".embed_tokens.base_layer.weight", ".lm_head.base_layer.weight")), "refused",
         "skips only embed_tokens / lm_head base_layer copies; {keys} is \"unsupported LoRA weight\".",
         CONVERT, f"vllm/lora/utils.py is_base_embedding_weights, parse_fine_tuned_lora_name ({V})"),
    Rule(Code.SERVE_VOCABULARY, f.changes_vocabulary, "refused",
         "serves the base's vocabulary only ({base_rows} rows; the adapter's has {rows}): extra vocabulary (lora_extra_vocab_size, "
         "new_embeddings.safetensors) is no longer supported, and \"The embedding LoRA size(...) must be consistent with the base "
         "model's vocabulary size(...)\".",
         MERGE, f"vllm/lora/lora_model.py LoRAModel.from_lora_tensors, vllm/config/lora.py ({V})"),
    Rule(Code.SERVE_DORA, f.uses_dora, "refused", "refuses DoRA: \"vLLM does not yet support DoRA.\"",
         MERGE, f"vllm/lora/peft_helper.py PEFTHelper._validate_features ({V})"),
    Rule(Code.SERVE_LORA_BIAS, f.uses_lora_bias, "refused", "refuses lora_bias: \"vLLM does not support LoRA bias (lora_bias).\"",
         MERGE, f"vllm/lora/peft_helper.py PEFTHelper._validate_features ({V})"),
    Rule(Code.SERVE_TRAINABLE_TOKENS, f.uses_trainable_tokens, "refused",
         "the trainable_tokens_delta key is \"unsupported LoRA weight\" (vLLM reads no trainable_token_indices).",
         MERGE, f"vllm/lora/utils.py parse_fine_tuned_lora_name ({V})"),
))
