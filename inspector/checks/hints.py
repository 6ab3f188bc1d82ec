"""Hint sentences several checks share, written once."""

from __future__ import annotations

_TRAINED_BASE = "Use the base model the adapter was trained on"
TRAINED_BASE = f"{_TRAINED_BASE}."
TRAINED_BASE_SEE_CONFIG = f"{_TRAINED_BASE} (see base_model_name_or_path in adapter_config.json)."
UNMERGED = "Use the adapter unmerged with PEFT (PeftModel.from_pretrained)."
PEFT_MERGE = "Merge it with PEFT's merge_and_unload."
RESAVE_INCOMPLETE = "Re-save the adapter from the trained model; the file is incomplete."
SCAN_BASE = "`lora-inspector scan BASE --tensors`"
