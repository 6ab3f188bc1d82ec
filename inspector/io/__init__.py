"""Files in and out: what lora-inspector reads from checkpoints and how it writes one.

Reading: ``checkpoint`` resolves a path into a ``Checkpoint`` from headers only (``header`` for
safetensors, ``torchbin`` for legacy pickles, walked without unpickling), with ``tokenizer`` facts
and ``paths`` rules; ``loader`` reads one tensor (or rows of it) by its byte span, against the
``stamp`` taken when its header was read. Writing: ``writer`` streams a ``shards`` plan into a
staging directory, ``outdir`` decides whether ``--out`` may be written, ``sidefiles`` what travels
with the tensors, and ``publish`` puts the result in place. Nothing here imports torch at import time.
"""
