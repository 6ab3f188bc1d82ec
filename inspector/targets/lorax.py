"""LoRAX's LoRA serving rules, read at predibase/lorax commit a7394ba (v0.12.1 + 59; docs/targets.md).

LoRAX reads r, lora_alpha, use_rslora and fan_in_fan_out from adapter_config.json (LoraConfig.load)
and, per model, looks up ``base_model.model.<module>.lora_A/B.weight`` for the layers that model
lists (ADAPTER_LAYERS in lorax_server/models/*.py); every other tensor is never read, and nothing
says so (only a looked-up pair left unused is logged). The scale lora_alpha / r (sqrt(r) with
rsLoRA) is folded into lora_B once per adapter.
"""

from __future__ import annotations

from inspector.findings import Code
from inspector.targets import facts as f
from inspector.targets.rule import Rule, Target

V = "a7394ba"
MERGE = "Serve the merged model instead: `lora-inspector merge {base} {adapter} --out merged`."
CONVERT = "`lora-inspector convert {adapter} --for lorax --out converted` folds the per-module scaling into lora_B (lossless); serve converted/."

_LLAMA = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
# model_type -> the layers LoRAX adapts (last names of ADAPTER_LAYERS in server/lorax_server/models/<model>.py);
# only these model types load adapters (supports_adapter_loading), the others refuse.
LAYERS: dict[str, frozenset[str]] = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "cohere", "granite", "gemma", "gemma2", "solar"), _LLAMA),
    "mixtral": frozenset({"q_proj", "k_proj", "v_proj", "o_proj"}),
    "phi3": frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}),
    "phi": frozenset({"q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"}),
    "phi-msft": frozenset({"q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"}),
    "gpt2": frozenset({"c_attn", "c_proj", "c_fc"}),
    "qwen": frozenset({"c_attn", "c_proj", "w1", "w2"}),
    "bloom": frozenset({"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}),
    "dbrx": frozenset({"Wqkv", "out_proj"}),
    "mllama": _LLAMA | {"fc1", "fc2"},  # text layers and the vision tower's
    "xlm-roberta": frozenset({"query", "key", "value"}),
}
# The same models' LoRA on vocabulary matrices: lm_head where ADAPTER_LAYERS lists LM_HEAD, never embed_tokens.
VOCAB_LAYERS: dict[str, frozenset[str]] = {
    t: frozenset({"lm_head"} if t in ("llama", "mistral", "qwen2", "cohere", "granite", "phi", "phi-msft", "qwen", "dbrx", "mllama") else ())
    for t in LAYERS
}

TARGET = Target("lorax", "LoRAX", f"LoRAX commit {V} (v0.12.1 + 59 commits)", (
    Rule(Code.SERVE_METHOD, f.method_is_not("LORA"), "refused",
         "loads LoRA (and Medusa) adapters only, through PEFT's LoraConfig; this one is {peft_type}.",
         MERGE, f"server/lorax_server/adapters/lora.py LoraConfig.load, adapters/config.py ({V})"),
    Rule(Code.SERVE_ARCHITECTURE, f.model_type_not_in(frozenset(LAYERS)), "refused",
         "has no adapter support for model_type {model_type} (\"This model does not support adapter loading.\", or \"Unsupported model type ...\").",
         MERGE, f"server/lorax_server/models/model.py Model.load_adapter, models/__init__.py get_model ({V})"),
    Rule(Code.SERVE_TARGET_MODULE, f.lora_on_modules_outside(LAYERS, vocab=False), "diverges",
         "adapts only {allowed} on this model; the LoRA on {modules} is never read and nothing says so.",
         MERGE, f"server/lorax_server/adapters/lora.py LoraConfig.map_weights_for_model, models/flash_*.py ADAPTER_LAYERS ({V})"),
    Rule(Code.SERVE_EMBEDDING_LORA, f.lora_on_modules_outside(VOCAB_LAYERS, vocab=True), "diverges",
         "adapts no embedding, and lm_head only on some models: the LoRA on {modules} is never read and nothing says so.",
         MERGE, f"server/lorax_server/adapters/lora.py LoraConfig.map_weights_for_model, models/flash_*.py ADAPTER_LAYERS ({V})"),
    Rule(Code.SERVE_PARTIAL_LAYERS, f.has_partial_layers, "diverges",
         "drops a module kind in every layer when one layer has no LoRA for it (LoraWeights.load returns None): the LoRA on {modules}, "
         "in some layers only (layers_to_transform), is not applied at all.",
         MERGE, f"server/lorax_server/adapters/lora.py LoraWeights.load ({V})"),
    Rule(Code.SERVE_MODULES_TO_SAVE, f.has_full_weights, "diverges",
         "reads lora_A / lora_B pairs only: the full weights {modules} are never read and nothing says so.",
         MERGE, f"server/lorax_server/adapters/lora.py LoraConfig.map_weights_for_model ({V})"),
    Rule(Code.SERVE_VOCABULARY, f.changes_vocabulary, "diverges",
         "the adapter's vocabulary has {rows} rows, the base's {base_rows}: LoRAX loads an adapter's tokenizer but never its embedding "
         "rows, so new token ids have no row in the base's embedding.",
         MERGE, f"server/lorax_server/utils/adapter.py load_module_map, models/model.py Model.load_adapter ({V})"),
    Rule(Code.SERVE_DORA, f.uses_dora, "diverges",
         "ignores use_dora: the adapter is served as plain LoRA, without the magnitude vector.",
         MERGE, f"server/lorax_server/adapters/lora.py LoraConfig.load ({V})"),
    Rule(Code.SERVE_LORA_BIAS, f.uses_lora_bias, "diverges",
         "never reads lora_B.bias: the LoRA bias is dropped.",
         MERGE, f"server/lorax_server/adapters/lora.py LoraConfig.map_weights_for_model ({V})"),
    Rule(Code.SERVE_TRAINABLE_TOKENS, f.uses_trainable_tokens, "diverges",
         "never reads trainable_tokens_delta: the base's token rows serve.",
         MERGE, f"server/lorax_server/adapters/lora.py LoraConfig.map_weights_for_model ({V})"),
    Rule(Code.SERVE_SCALING, f.uses_patterns, "diverges",
         "scales every module by the config's lora_alpha / r: {fields} ignored.",
         CONVERT, f"server/lorax_server/adapters/lora.py LoraWeights.load (get_scaling_factor) ({V})"),
))
