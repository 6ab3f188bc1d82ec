"""SGLang's LoRA serving rules, read in SGLang v0.5.23 (the PyPI wheel; docs/targets.md).

SGLang sizes its LoRA memory pool from the adapters given at start (--lora-paths: the largest r,
the union of target_modules) unless --max-lora-rank / --lora-target-modules say otherwise, so rank
and target modules need no flag for an adapter loaded at start. It loads LoRA pairs per layer into
stacked buffers (q/k/v into qkv_proj, gate/up into gate_up_proj), one scale lora_alpha / r per
adapter, and LoRA on embed_tokens / lm_head.
"""

from __future__ import annotations

from inspector.findings import Code
from inspector.targets import facts as f
from inspector.targets.rule import Rule, Target

V = "v0.5.23"
MERGE = "Serve the merged model instead: `lora-inspector merge {base} {adapter} --out merged`."
CONVERT = "`lora-inspector convert {adapter} --for sglang --out converted` folds the scaling into lora_B (lossless); serve converted/."
LAYER = r"\.(layers|h|blocks)\.\d+\."  # a full weight inside a decoder layer: loaded into the layer's LoRA buffers

TARGET = Target("sglang", "SGLang", f"SGLang {V} (PyPI wheel sglang-0.5.23)", (
    Rule(Code.SERVE_METHOD, f.method_is_not("LORA"), "refused",
         "loads LoRA adapters only (LoRAAdapter asserts peft_type == \"lora\"; this one is {peft_type}).",
         MERGE, f"python/sglang/srt/lora/lora.py LoRAAdapter.__init__ ({V})"),
    Rule(Code.SERVE_TARGET_MODULE, f.lora_without_partner(frozenset({"q_proj", "k_proj", "v_proj"}), frozenset({"q_proj", "v_proj"})), "refused",
         "stacks q/k/v LoRA into qkv_proj and reads q_proj's and v_proj's unconditionally: LoRA on {modules} without {missing} "
         "fails to load (a KeyError, or \"Cannot find target module name for ...\").",
         MERGE, f"python/sglang/srt/lora/lora.py LoRAAdapter.normalize_qkv_proj, utils.py get_target_module_name ({V})"),
    Rule(Code.SERVE_TARGET_MODULE, f.lora_without_partner(frozenset({"up_proj"}), frozenset({"gate_proj"})), "refused",
         "stacks gate/up LoRA into gate_up_proj from gate_proj's: LoRA on {modules} without {missing} fails to load "
         "(\"Cannot find target module name for ...\").",
         MERGE, f"python/sglang/srt/lora/lora.py LoRAAdapter.normalize_gate_up_proj, utils.py get_target_module_name ({V})"),
    Rule(Code.SERVE_MODULES_TO_SAVE, f.full_weights_matching(LAYER, invert=True), "diverges",
         "loads LoRA pairs only: the trained copies of {modules} are skipped without an error, and the base's weights serve.",
         MERGE, f"python/sglang/srt/lora/lora.py LoRAAdapter._process_weight ({V})"),
    Rule(Code.SERVE_MODULES_TO_SAVE, f.full_weights_matching(LAYER), "refused",
         "puts every tensor of a decoder layer that is not lora_A in a lora_B buffer: the full weights {modules} fail to load "
         "(\"LoRA buffer shape ... does not match weight shape ...\" or \"Cannot find target module name for ...\").",
         MERGE, f"python/sglang/srt/lora/mem_pool.py LoRAMemoryPool.load_lora_weight_to_buffer ({V})"),
    Rule(Code.SERVE_VOCABULARY, f.changes_vocabulary, "refused",
         "the adapter's vocabulary has {rows} rows, the base's {base_rows}: \"LoRA serving currently doesn't support adapters that add "
         "tokens to the vocabulary\" (with added_tokens.json; without it the new rows are never loaded).",
         MERGE, f"python/sglang/srt/lora/lora_manager.py LoRAManager.validate_new_adapter, lora_config.py ({V})"),
    Rule(Code.SERVE_DORA, f.uses_dora, "refused", "refuses DoRA: \"LoRA serving currently doesn't support DoRA adapters\".",
         MERGE, f"python/sglang/srt/lora/lora_manager.py LoRAManager.validate_new_adapter ({V})"),
    Rule(Code.SERVE_LORA_BIAS, f.uses_lora_bias, "diverges",
         "has no LoRA bias: lora_B.bias lands in the lora_B slot and lora_B.weight, read after it, overwrites it; the bias is dropped silently.",
         MERGE, f"python/sglang/srt/lora/mem_pool.py LoRAMemoryPool.load_lora_weight_to_buffer ({V})"),
    Rule(Code.SERVE_TRAINABLE_TOKENS, f.uses_trainable_tokens, "diverges",
         "reads no trainable_token_indices: the trained token rows (trainable_tokens_delta) are skipped and the base's rows serve.",
         MERGE, f"python/sglang/srt/lora/lora.py LoRAAdapter._process_weight, lora_config.py ({V})"),
    Rule(Code.SERVE_SCALING, f.uses_rslora, "diverges",
         "ignores use_rslora and scales by lora_alpha / r: every update is sqrt(r) = sqrt({r}) times weaker than PEFT's lora_alpha / sqrt(r).",
         CONVERT, f"python/sglang/srt/lora/lora.py LoRAAdapter.__init__ (scaling) ({V})"),
    Rule(Code.SERVE_SCALING, f.uses_alpha_pattern, "diverges",
         "ignores alpha_pattern: every module is scaled by the config's lora_alpha / r.",
         CONVERT, f"python/sglang/srt/lora/lora.py LoRAAdapter.__init__ (scaling) ({V})"),
    Rule(Code.SERVE_SCALING, f.uses_rank_pattern, "refused",
         "ignores rank_pattern: it sizes every module's buffer at the config's r and a module of another rank fails to load "
         "(\"LoRA buffer shape ... does not match weight shape ...\").",
         "`lora-inspector convert {adapter} --for sglang --out converted` pads every module to one r and folds the scaling into lora_B "
         "(lossless); serve converted/.",
         f"python/sglang/srt/lora/mem_pool.py LoRAMemoryPool.load_lora_weight_to_buffer ({V})"),
))
