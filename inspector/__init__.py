"""lora-inspector: inspect, check, repair and merge LoRA adapters and their base checkpoints.

Importing this package imports neither torch nor transformers; only ``repair`` and ``merge`` do.
"""

__version__ = "0.1.0"
