"""JSON reports, schema 1 (documented in the README; fields are only ever added)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from inspector.diff import DiffResult
from inspector.io.checkpoint import Checkpoint
from inspector.report import Failure, Renderer
from inspector.scan import ScanResult

if TYPE_CHECKING:
    from inspector.check import Fleet
    from inspector.convert import ConvertResult
    from inspector.diagnose import Diagnosis
    from inspector.merge import MergeResult
    from inspector.repair import ResizeResult
    from inspector.verify import VerifyResult

SCHEMA = 1


def checkpoint_summary(ckpt: Checkpoint) -> dict:
    return {
        "path": ckpt.path,
        "kind": ckpt.kind,
        "format": ckpt.format,
        "files": list(ckpt.files),
        "tensor_count": ckpt.tensor_count,
        "parameter_count": ckpt.parameter_count,
        "total_bytes": ckpt.total_bytes,
        "dtypes": ckpt.dtypes,
        "config": ckpt.key_config(),
        "tokenizer": ckpt.tokenizer.as_json() if ckpt.tokenizer else None,
        "warnings": list(ckpt.warnings),
        **({"remote": ckpt.remote.as_json()} if ckpt.remote is not None else {}),  # read from the Hub (docs/json.md)
    }


def dumps(obj: dict) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def check_report(diagnosis: Diagnosis) -> dict:
    """check's object for one adapter (also each of ``results`` with several)."""
    from inspector.check import Selected

    plan = diagnosis.target
    report = {
        "schema": SCHEMA,
        "command": "check",
        "base": checkpoint_summary(diagnosis.base),
        "adapter": checkpoint_summary(diagnosis.adapter.checkpoint),
        "tokenizer": diagnosis.tokenizer.as_json() if diagnosis.tokenizer else None,
        "vocab": {"base_rows": plan.base_rows, "merged_rows": plan.rows, "source": plan.source},
        "findings": [f.as_json() for f in diagnosis.findings],
        "summary": diagnosis.summary,
    }
    if diagnosis.binding.values:  # check --values: what the value pass measured (docs/json.md)
        report["values"] = diagnosis.binding.value_scan.as_json()
    if isinstance(diagnosis, Selected):  # the findings and summary above are what the rules kept
        report["rules"] = diagnosis.rules_json()
    return report


class Json(Renderer[str]):
    """Schema 1: one JSON object per run, results and failures alike (``--format json`` is always parseable)."""

    def scan(self, result: ScanResult) -> str:
        items = []
        for entry in result.checkpoints:
            item = checkpoint_summary(entry.checkpoint)
            if entry.checkpoint.kind == "adapter":  # what check and merge would say of its adapter_config.json
                item["valid"] = entry.invalid is None
                item["invalid_reason"] = entry.invalid
            if entry.shown is not None:
                item["tensors"] = [t.as_json() for t in entry.shown]
            if entry.values is not None:
                item["values"] = entry.values
            items.append(item)
        return dumps({"schema": SCHEMA, "command": "scan", "match": result.match, "checkpoints": items})

    def diff(self, result: DiffResult) -> str:
        return dumps(
            {
                "schema": SCHEMA,
                "command": "diff",
                "a": checkpoint_summary(result.a),
                "b": checkpoint_summary(result.b),
                "added": [t.as_json() for t in result.added],
                "removed": [t.as_json() for t in result.removed],
                "reshaped": [{"name": c.name, "a_shape": list(c.a.shape), "b_shape": list(c.b.shape)} for c in result.reshaped],
                "retyped": [{"name": c.name, "a_dtype": c.a.dtype, "b_dtype": c.b.dtype} for c in result.retyped],
                "summary": {
                    "added": len(result.added),
                    "removed": len(result.removed),
                    "reshaped": len(result.reshaped),
                    "retyped": len(result.retyped),
                    "unchanged": result.unchanged,
                    "identical": result.identical,
                    "aligned": result.aligned,
                    "untouched": result.untouched,
                },
                "values": None if result.values is None else {
                    "atol": result.atol,
                    "compared": len(result.values),
                    "differ": sum(1 for v in result.values if v.nonfinite or v.max_abs > result.atol),
                    "max_abs": max((v.max_abs for v in result.values), default=0.0),
                    "tensors": [{"name": v.name, "max_abs": v.max_abs, "rel": v.rel, "nonfinite": v.nonfinite, "shared_nonfinite": v.shared_nonfinite,
                                 "change": v.change, "outlier": v.name in result.outliers} for v in result.values],
                    "outliers": list(result.outliers),
                    "targeted": None if result.targeted is None else list(result.targeted),
                    "noop": result.noop,
                },
            }
        )

    def check(self, diagnosis: Diagnosis) -> str:
        return dumps(check_report(diagnosis))

    def check_many(self, fleet: Fleet) -> str:
        # Each result is exactly what check prints for that adapter alone.
        return dumps({"schema": SCHEMA, "command": "check", "results": [check_report(d) for d in fleet.results]})

    def resize(self, result: ResizeResult) -> str:
        plan, sub = result.plan, result.subword
        return dumps(
            {
                "schema": SCHEMA,
                "command": "resize",
                "out": str(result.out),
                "old_rows": plan.old_rows,
                "rows": plan.rows,
                "requested_rows": plan.requested,
                "reused_padding_rows": plan.reused_padding,
                "reason": plan.reason,
                "init": plan.init,
                "matrices": [{"name": m.name, "old_shape": list(m.old_shape), "new_shape": list(m.new_shape), "init": m.init} for m in result.matrices],
                "subword": None if sub is None else {
                    "tokens": sub.tokens,
                    "fallbacks": sub.fallbacks,
                    "byte_only": sub.byte_only,
                    "byte_only_share": round(sub.byte_only / sub.tokens, 4) if sub.tokens else 0.0,
                    "padding_rows": sub.padding,
                },
                "tokenizer_from": result.tokenizer_from,
                "warnings": result.warnings,
            }
        )

    def merge(self, result: MergeResult) -> str:
        plan = result.plan
        vocab = plan.diagnosis.target
        return dumps(
            {
                "schema": SCHEMA,
                "command": "merge",
                "out": str(result.out),
                "base": plan.diagnosis.base.path,
                "adapter": plan.diagnosis.adapter.checkpoint.path,
                "device": plan.device,
                "vocab": {"base_rows": vocab.base_rows, "merged_rows": vocab.rows, "source": vocab.source},
                "init": plan.init,
                "untied": plan.untied,
                "untied_head": plan.head,  # the head's weight name when untied (lm_head.weight, decoder.weight, ...)
                "stats": result.stats,
                "tokenizer_from": result.tokenizer_from,
                # check's errors the merge repaired (by resizing), those it merged over with an explicit --init,
                # and the warnings it acted on
                "repaired": [f.as_json() for f in plan.repaired],
                "accepted": [f.as_json() for f in plan.accepted],
                "warnings": [f.as_json() for f in plan.diagnosis.findings if f.severity == "warning"],
            }
        )

    def convert(self, result: ConvertResult) -> str:
        plan = result.plan
        d = plan.diagnosis
        return dumps(
            {
                "schema": SCHEMA,
                "command": "convert",
                "out": str(result.out),
                "adapter": d.adapter.checkpoint.path,
                "base": d.base.path,
                "base_from": plan.base_from,  # "--base" or "base_model_name_or_path"
                "target": plan.target,
                "dtype": plan.dtype,
                "repairs": [{"kind": r.kind, "message": r.message, "keys": list(r.keys)} for r in plan.repairs],
                "config_changes": plan.config_changes,  # field -> [before, after]
                "stats": result.stats,
                "tokenizer_from": result.tokenizer_from,
                # the server's findings on the input that the converted adapter no longer has, the
                # flags it still needs, check's own warnings on the input, and notes (rounding, kept copies)
                "repaired": [f.as_json() for f in plan.repaired],
                "flags": [f.as_json() for f in plan.flags],
                "warnings": [f.as_json() for f in plan.warnings],
                "notes": list(plan.notes),
            }
        )

    def verify(self, result: VerifyResult) -> str:
        return dumps({"schema": SCHEMA, "command": "verify", **result.as_json()})

    def error(self, failure: Failure) -> str:
        # The same lines as stderr's Error/Hint, so a script reading stdout alone learns what failed.
        error = {"message": failure.message, "path": failure.path, "hint": failure.hint}
        return dumps({"schema": SCHEMA, "command": failure.command, "error": error})
