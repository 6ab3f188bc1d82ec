"""sglang's LoRA serving rules (to be verified against sglang's source; see docs/targets.md)."""

from __future__ import annotations

from inspector.findings import Code
from inspector.targets import facts as f
from inspector.targets.rule import Rule, Target

TARGET = Target("sglang", "sglang", "", ())
