"""The config.json of a merged task model.

A SEQ_CLS / TOKEN_CLS / QUESTION_ANS adapter carries the head of the model it was trained on
(modules_to_save: ``classifier``, ``score``, ``qa_outputs``) but not that model's config: merged
onto a base saved as ``BertModel`` or ``LlamaForCausalLM``, the output would keep the base's
architectures and its default two labels, and ``AutoModelForSequenceClassification`` would refuse
a 3-row classifier. The merged config names the task class and as many labels as the head has rows.

Nothing else is changed: a decoder's ``pad_token_id`` stays what the base says (PeftModel on the
base's task class runs with that same config; the adapter does not record another one).

Importing this module imports neither torch nor transformers; ``task_class`` asks transformers,
lazily, which class it builds for a model type.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from inspector import interrupts

# PEFT task types whose model puts a head on the base -> (transformers' name for the task, its
# table of model_type -> class in transformers.models.auto.modeling_auto).
TASKS = {
    "SEQ_CLS": ("SequenceClassification", "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES"),
    "TOKEN_CLS": ("TokenClassification", "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES"),
    "QUESTION_ANS": ("QuestionAnswering", "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES"),
}
# A transformers model class name: the model's prefix, then For<Task>, LMHeadModel or Model.
_ARCHITECTURE = re.compile(r"([A-Za-z]\w*?)(?:For[A-Z]\w*|LMHeadModel|Model)")


def label_count(heads: Mapping[str, Sequence[int]]) -> int | None:
    """The labels a head's tensors (name -> shape) imply: the rows of its output layer, the one 2-D
    weight whose rows no other layer of the head takes as input (RoBERTa's classifier.out_proj,
    after classifier.dense). None when that is not one number."""
    weights = {name: tuple(shape) for name, shape in heads.items() if name.endswith(".weight") and len(shape) == 2}
    outputs = {rows for name, (rows, _) in weights.items() if all(rows != cols for other, (_, cols) in weights.items() if other != name)}
    return outputs.pop() if len(outputs) == 1 else None


def _transformers_class(model_type: object, table: str) -> tuple[bool, str | None]:
    """(does this transformers know ``model_type``, its class for the task or None)."""
    if not isinstance(model_type, str):
        return False, None
    # Held: an import interrupted halfway can break the module for good (see inspector/interrupts.py).
    with interrupts.held():
        from transformers.models.auto import configuration_auto, modeling_auto
    if model_type not in configuration_auto.CONFIG_MAPPING_NAMES:
        return False, None
    name = getattr(modeling_auto, table, {}).get(model_type)
    name = name[0] if isinstance(name, (tuple, list)) and name else name
    return True, name if isinstance(name, str) else None


def task_class(config: Mapping, task_type: str | None) -> str | None:
    """The class that builds ``task_type``'s model from this config: the remote code's own (auto_map),
    else transformers' for the config's model_type (None where transformers has no such model), else,
    for a model type this transformers does not know, the base architecture's prefix + For<Task>
    (the naming every transformers model follows)."""
    if task_type not in TASKS:
        return None
    task, table = TASKS[task_type]
    auto_map = config.get("auto_map")
    if isinstance(auto_map, dict):  # remote code: its classes are its own
        ref = auto_map.get(f"AutoModelFor{task}")
        return (ref.rpartition(".")[2] or None) if isinstance(ref, str) else None
    known, name = _transformers_class(config.get("model_type"), table)
    if known:
        return name
    archs = config.get("architectures")
    match = _ARCHITECTURE.fullmatch(archs[0]) if isinstance(archs, list) and archs and isinstance(archs[0], str) else None
    return f"{match.group(1)}For{task}" if match else None


def _labelled(config: dict, n: int) -> dict:
    """``config`` with ``n`` labels: the base's names when it has exactly ``n``, else transformers'
    defaults LABEL_0..LABEL_{n-1} (what ``num_labels=n`` gives)."""
    id2label = config.get("id2label")
    if not (isinstance(id2label, dict) and sorted(map(str, id2label)) == sorted(str(i) for i in range(n))):
        config["id2label"] = {str(i): f"LABEL_{i}" for i in range(n)}
        config["label2id"] = {f"LABEL_{i}": i for i in range(n)}
    if "num_labels" in config:  # transformers derives it from id2label; a stale copy only warns
        config["num_labels"] = n
    if n == 1 and config.get("problem_type") == "single_label_classification":
        del config["problem_type"]  # transformers refuses that pair; one output is a regression head
    return config


def task_config(config: dict, task_type: str | None, heads: Mapping[str, Sequence[int]]) -> dict:
    """The merged model's config: the base's ``config``, and where the adapter adds a head (``heads``:
    its tensors the base lacks, name -> shape) the task class as architectures (by ``task_type``) and
    as many labels as the head's output layer has rows. Without a head, ``config`` itself."""
    if not heads:
        return config
    new = dict(config)
    n = label_count(heads)
    if n is not None:  # QA too: BERT-style qa_outputs has num_labels rows (start, end)
        new = _labelled(new, n)
    cls = task_class(new, task_type)
    if cls is not None:
        new["architectures"] = [cls]
    return new
