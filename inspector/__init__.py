"""lora-inspector: inspect, check, repair and merge LoRA adapters and their base checkpoints.

Importing this package imports neither torch nor transformers; scan, diff and check never do, and
resize / merge import torch only inside the functions that compute.
"""

__version__ = "0.1.0"
