"""Text Generation Inference's LoRA serving rules, read at commit db931fc (v3.3.7 + 1; docs/targets.md).

TGI's adapter code is LoRAX's (server/text_generation_server/adapters/lora.py says so): it reads r,
lora_alpha, use_rslora and fan_in_fan_out, and looks up LoRA pairs by exact path,
``model.layers.N.self_attn.{q,k,v,o,qkv}_proj`` and ``model.layers.N.mlp.{gate,up,down}_proj`` (and
mlp.c_fc / c_proj), for the layers build_layer_weight_lookup finds. Every other tensor is never
read; a looked-up pair left unused (lm_head) is logged as "unused adapter weights".
"""

from __future__ import annotations

from inspector.findings import Code
from inspector.targets import facts as f
from inspector.targets.rule import Rule, Target

V = "db931fc"
MERGE = "Serve the merged model instead: `lora-inspector merge {base} {adapter} --out merged`."
CONVERT = "`lora-inspector convert {adapter} --for tgi --out converted` folds the per-module scaling into lora_B (lossless); serve converted/."
# The paths get_model_with_lora_adapters loads (its adapter_layers, as build_layer_weight_lookup names them).
PATHS = r"model\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|o_proj|qkv_proj)|mlp\.(gate_proj|up_proj|down_proj|c_fc|c_proj))"

TARGET = Target("tgi", "TGI", f"text-generation-inference commit {V} (v3.3.7 + 1 commit)", (
    Rule(Code.SERVE_METHOD, f.method_is_not("LORA"), "refused",
         "loads LoRA adapters only, through PEFT's LoraConfig; this one is {peft_type}.",
         MERGE, f"server/text_generation_server/adapters/lora.py LoraConfig.load ({V})"),
    Rule(Code.SERVE_TARGET_MODULE, f.lora_on_paths_other_than(PATHS), "diverges",
         "loads LoRA only at model.layers.N.self_attn.{{q,k,v,o,qkv}}_proj and model.layers.N.mlp.{{gate,up,down}}_proj (c_fc, c_proj); "
         "the LoRA on {modules} is never read and nothing says so.",
         MERGE, f"server/text_generation_server/models/__init__.py get_model_with_lora_adapters, utils/adapter.py build_layer_weight_lookup ({V})"),
    Rule(Code.SERVE_EMBEDDING_LORA, f.has_embedding_lora, "diverges",
         "adapts neither the embedding nor lm_head: the LoRA on {modules} is dropped (lm_head's with \"unused adapter weights\" in the log).",
         MERGE, f"server/text_generation_server/models/__init__.py get_model_with_lora_adapters ({V})"),
    Rule(Code.SERVE_PARTIAL_LAYERS, f.has_partial_layers, "diverges",
         "drops a module kind in every layer when one layer has no LoRA for it (LoraWeights.prepare_weights returns None): the LoRA on "
         "{modules}, in some layers only (layers_to_transform), is not applied at all (\"unused adapter weights\" in the log).",
         MERGE, f"server/text_generation_server/adapters/lora.py LoraWeights.prepare_weights ({V})"),
    Rule(Code.SERVE_MODULES_TO_SAVE, f.has_full_weights, "diverges",
         "reads lora_A / lora_B pairs only: the full weights {modules} are never read and nothing says so.",
         MERGE, f"server/text_generation_server/adapters/lora.py LoraConfig.map_weights_for_model ({V})"),
    Rule(Code.SERVE_VOCABULARY, f.changes_vocabulary, "diverges",
         "the adapter's vocabulary has {rows} rows, the base's {base_rows}: TGI loads an adapter's tokenizer but never its embedding "
         "rows, so new token ids have no row in the base's embedding.",
         MERGE, f"server/text_generation_server/models/__init__.py get_model_with_lora_adapters, utils/adapter.py ({V})"),
    Rule(Code.SERVE_DORA, f.uses_dora, "diverges",
         "ignores use_dora: the adapter is served as plain LoRA, without the magnitude vector.",
         MERGE, f"server/text_generation_server/adapters/lora.py LoraConfig.load ({V})"),
    Rule(Code.SERVE_LORA_BIAS, f.uses_lora_bias, "diverges",
         "never reads lora_B.bias: the LoRA bias is dropped.",
         MERGE, f"server/text_generation_server/adapters/lora.py LoraConfig.map_weights_for_model ({V})"),
    Rule(Code.SERVE_TRAINABLE_TOKENS, f.uses_trainable_tokens, "diverges",
         "never reads trainable_tokens_delta: the base's token rows serve.",
         MERGE, f"server/text_generation_server/adapters/lora.py LoraConfig.map_weights_for_model ({V})"),
    Rule(Code.SERVE_SCALING, f.uses_patterns, "diverges",
         "scales every module by the config's lora_alpha / r: {fields} ignored.",
         CONVERT, f"server/text_generation_server/adapters/lora.py LoraWeights.prepare_weights (get_scaling_factor) ({V})"),
))
