"""The merge's row-block pipeline: with blocks of a few rows (every tensor in many blocks), the block
buffers handed round in turn while the compute thread runs ahead of the writer give the same bytes
as a fresh buffer for every block."""

from __future__ import annotations

from pathlib import Path

import pytest

import inspector.merge as merge_mod
from tests.test_merge import CASES, Case, albert_mlm, bert_mlm_base, build, extra_root, llama_fp16, merge_json, modernbert_mlm, xlnet_lm  # noqa: F401 (fixtures)


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_reused_block_buffers_give_the_bytes_of_fresh_ones(case: Case, request: pytest.FixtureRequest, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    base, adapter = build(case, request, tmp_path)
    monkeypatch.setattr(merge_mod, "CHUNK_BYTES", 256)  # 1-4 rows a block
    merge_json(capsys, base, adapter, tmp_path / "reused", *case.args)
    with monkeypatch.context() as m:
        m.setattr(merge_mod._Arena, "slot", lambda self, role, dtype, shape, dev="cpu", pin=False: merge_mod._Arena().get(role, dtype, shape, dev, pin=pin))
        merge_json(capsys, base, adapter, tmp_path / "fresh", *case.args)
    reused, fresh = _files(tmp_path / "reused"), _files(tmp_path / "fresh")
    assert reused.keys() == fresh.keys()
    assert [name for name in reused if reused[name] != fresh[name]] == []
