"""Issue 10, defect 3: regexes from adapter_config.json (and ``scan --match``) are matched with bounded work.

A fault campaign found ``".*" * 12 + "Z"`` as target_modules took 75 s against one 31-character module
name; exclude_modules and rank_pattern / alpha_pattern keys likewise. Such patterns are refused with
Error/Hint (exit 2) in well under the time one match used to take, and ordinary patterns still match
exactly as PEFT's ``re`` does.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from inspector.adapter import matches_target
from inspector.adapter_config import AdapterConfig, parse_config
from inspector.cli import main
from inspector.errors import InvalidInputError, UsageError
from inspector.patterns import MAX_CHAIN, Matcher, PatternRefused, compile_bounded, refusal
from inspector.scan import scan
from tests.failures import assert_no_report
from tests.hostile_corpus import deadline, edit_json_file, snapshot
from tests.models import Built

CAMPAIGN = ".*" * 12 + "Z"  # 25 characters; re.fullmatch took 75 s on the 31-character name below
Q0 = "model.layers.0.self_attn.q_proj"
# Structurally tame (six repeats, no nesting) but the backreferences defeat the regex module's shortcuts
# too: about 0.1 s per 31-character name in regex, seconds in re. Only the time budget stops it.
BACKTRACKER = "(.*)(.*)(.*)(.*)(.*)(.*)" + r"\1\2\3\4\5\6"
# The same for rank_pattern / alpha_pattern keys, whose groups PEFT's (.*\.)?(KEY)$ numbers from 3.
KEY_BACKTRACKER = "(.*)(.*)(.*)(.*)(.*)(.*)()()" + r"\3\4\5\6\7\8"
FIELDS = ["target_modules", "exclude_modules", "rank_pattern", "alpha_pattern"]

MODULES = [
    Q0,
    "model.layers.0.self_attn.v_proj",
    "model.layers.11.mlp.down_proj",
    "base_model.model.model.layers.3.self_attn.k_proj",
    "model.vision_tower.encoder.layers.0.self_attn.q_proj",
    "model.language_model.layers.7.mlp.gate_proj",
    "lm_head",
    "model.embed_tokens",
    "transformer.h.0.attn.c_attn",
]
PATTERNS = [
    r".*\.(q_proj|v_proj)$",
    Q0,
    r"model\.layers\.\d+\.self_attn\.(q|k|v|o)_proj",
    r"^(?!.*vision).*\.(q_proj|k_proj|v_proj)$",
    r".*layers\.(0|1|2)\..*",
    r"(?i).*Q_PROJ",
    r".*\b(gate|up|down)_proj",
    r"lm_head|.*embed_tokens",
    # Unsloth's generated target_modules for vision models: four lazy repeats in a row.
    r"(?:.*?(?:vision|image|visual|patch|language|text).*?(?:self_attn|attention|attn|mlp|feed_forward|ffn|dense).*?"
    r"(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj).*?)|(?:\bmodel\.layers\.[\d]{1,}\."
    r"(?:self_attn|attention|attn|mlp|feed_forward|ffn|dense)\.(?:(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)))",
    # Syntax the regex module reads differently (fuzzy matching, POSIX classes): re's reading is kept.
    "q_pro{e<=1}",
    "[[:alpha:]]+",
    r"(?P<x>\w)(?P=x).*",
    r"[^.]*\.[^.]*",
]


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _config(**fields) -> AdapterConfig:
    return parse_config({"peft_type": "LORA", "r": 8, "lora_alpha": 16, **fields}, "adapter_config.json")


def _assert_refused(rc: int, out: str, err: str, config: Path, field: str, pattern: str, why: str) -> None:
    assert "Traceback" not in err, err
    assert rc == 2, err
    assert_no_report(out, err)  # with --format json, the same failure as JSON
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith(f"Error: Invalid adapter_config.json for '{config}': {field}"), lines[0]
    assert repr(pattern) in lines[0] and why in lines[0], lines[0]
    assert lines[1].startswith("Hint: ") and "simpler regex" in lines[1], lines[1]


def _evil_config(adapter: Path, field: str, pattern: str) -> None:
    value = {pattern: 2} if field.endswith("pattern") else pattern
    edit_json_file(adapter / "adapter_config.json", **{field: value})


# ---- the campaign case, through the real CLI ------------------------------------------------------------------


@pytest.mark.parametrize("field", FIELDS)
def test_campaign_pattern_is_refused_by_check(capsys, work: Path, field: str) -> None:
    _evil_config(work / "adapter", field, CAMPAIGN)
    start = time.monotonic()
    with deadline(10):  # today's code: 75 s per module name
        rc, out, err = cli(capsys, "check", work / "base", work / "adapter", "--format", "json")
    assert time.monotonic() - start < 5
    why = "chains 12 variable repeats such as .*"
    _assert_refused(rc, out, err, work / "adapter" / "adapter_config.json", field, CAMPAIGN, why)


@pytest.mark.parametrize("field", FIELDS)
def test_campaign_pattern_is_refused_by_merge_writing_nothing(capsys, work: Path, field: str) -> None:
    _evil_config(work / "adapter", field, CAMPAIGN)
    before = snapshot(work)
    start = time.monotonic()
    with deadline(20):
        rc, out, err = cli(capsys, "merge", work / "base", work / "adapter", "--out", work / "merged", "--device", "cpu")
    assert time.monotonic() - start < 10
    _assert_refused(rc, out, err, work / "adapter" / "adapter_config.json", field, CAMPAIGN, "chains 12 variable repeats")
    assert snapshot(work) == before


def test_backtracking_past_the_structure_checks_runs_out_of_time(capsys, work: Path) -> None:
    # Passes the structure checks; the shared time budget refuses it while matching the base's module names.
    assert refusal(BACKTRACKER) is None
    state = load_file(str(work / "base" / "model.safetensors"))
    state["model.layers.0.self_attn." + "x" * 40 + ".weight"] = torch.zeros(2, 2)  # a long name: seconds per match
    save_file(state, str(work / "base" / "model.safetensors"), metadata={"format": "pt"})
    _evil_config(work / "adapter", "target_modules", BACKTRACKER)
    start = time.monotonic()
    with deadline(10):
        rc, out, err = cli(capsys, "check", work / "base", work / "adapter", "--format", "json")
    assert time.monotonic() - start < 5
    _assert_refused(rc, out, err, work / "adapter" / "adapter_config.json", "target_modules", BACKTRACKER, "was refused after")


# ---- bounded work, unit level ------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", FIELDS)
def test_every_field_is_matched_within_the_budget(field: str) -> None:
    """700 module names (a 70B model's linear layers): refused after the budget, not 700 slow matches."""
    evil = KEY_BACKTRACKER if field.endswith("pattern") else BACKTRACKER
    config = _config(**{"target_modules": r".*", field: {evil: 2} if field.endswith("pattern") else evil})
    start = time.monotonic()
    with pytest.raises(InvalidInputError) as info:
        for i in range(700):
            module = f"model.layers.{i}.self_attn.q_proj"
            matches_target(config, module) and config.scale_for(module)
    assert time.monotonic() - start < 2
    assert info.value.path == "adapter_config.json" and info.value.exit_code == 2
    assert info.value.why.startswith(f"{field}") and repr(evil) in info.value.why and "was refused after" in info.value.why


def test_budget_is_shared_by_every_name_and_pattern() -> None:
    """700 module names (a 70B model's linear layers), two slow patterns: one refusal, within the budget."""
    names = [f"model.layers.{i}.self_attn.q_proj.{'x' * 20}" for i in range(700)]
    matcher = Matcher()
    start = time.monotonic()
    with pytest.raises(PatternRefused) as info:
        for name in names:
            matcher.fullmatch("target_modules", BACKTRACKER, name)
            matcher.peft_key("rank_pattern key", KEY_BACKTRACKER, name)
    assert time.monotonic() - start < 2
    assert info.value.pattern in (BACKTRACKER, KEY_BACKTRACKER) and "was refused after" in info.value.why
    with pytest.raises(PatternRefused):  # refused for good: no second budget
        matcher.fullmatch("target_modules", r".*\.q_proj", Q0)


def test_ordinary_pattern_on_many_names_stays_within_budget() -> None:
    matcher = Matcher()
    names = [f"model.layers.{i}.mlp.experts.{j}.down_proj" for i in range(60) for j in range(128)]  # an MoE
    assert sum(matcher.fullmatch("target_modules", r".*\.(gate|up|down)_proj", n) for n in names) == len(names)


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (CAMPAIGN, "chains 12 variable repeats"),
        ("(a+)+$", "nests a repeat inside a repeat"),
        (r"(q_proj|v_proj)+x", "nests a repeat inside a repeat"),
        ("a{100000}", "more than 10,000 times"),
        (r"(?:q_proj\.){20000}", "more than 10,000 times"),  # the regex module spells counts out in memory
    ],
)
def test_refused_shapes(pattern: str, why: str) -> None:
    assert why in (refusal(pattern) or "")
    with pytest.raises(InvalidInputError) as info:
        _config(target_modules=pattern)
    assert repr(pattern) in info.value.why and why in info.value.why


def test_chain_limit_leaves_room_for_real_patterns() -> None:
    assert refusal(".*" * MAX_CHAIN + "Z") is None
    assert "chains 7" in (refusal(".*" * (MAX_CHAIN + 1) + "Z") or "")
    assert all(refusal(p) is None for p in PATTERNS)


def test_key_that_breaks_pefts_regex_is_refused() -> None:
    # PEFT's re.match(rf"(.*\.)?({key})$", ...) raises re.error on a global flag inside the group.
    with pytest.raises(re.error):
        re.match(r"(.*\.)?((?i)q_proj)$", Q0)
    with pytest.raises(InvalidInputError) as info:
        _config(rank_pattern={"(?i)q_proj": 2})
    assert "'(?i)q_proj' is not valid inside the regex PEFT builds from it" in info.value.why


def test_scan_match_is_bounded(llama: Built) -> None:
    start = time.monotonic()
    with pytest.raises(UsageError) as info:
        scan([llama.path], match=BACKTRACKER + "$")  # seconds per tensor name
    assert time.monotonic() - start < 5
    assert "was refused after" in info.value.why and info.value.exit_code == 2
    with pytest.raises(UsageError, match="Invalid --match"):
        scan([llama.path], match="a{100000}")


# ---- same answers as re for ordinary patterns ------------------------------------------------------------------


@pytest.mark.parametrize("pattern", PATTERNS)
def test_target_and_exclude_modules_match_as_re_fullmatch(pattern: str) -> None:
    targets = _config(target_modules=pattern)
    excluded = _config(target_modules=r".*", exclude_modules=pattern)
    for module in MODULES:
        expected = re.fullmatch(pattern, module) is not None
        assert matches_target(targets, module) is expected, (pattern, module)
        assert matches_target(excluded, module) is not expected, (pattern, module)


def test_rank_and_alpha_patterns_match_as_pefts_get_pattern_key() -> None:
    keys = {r"q_proj": 4, r"layers\.0\..*": 6, r"self_attn\.(k|v)_proj": 2, r"mlp.*": 10, r"model\.embed_tokens": 12}
    config = _config(rank_pattern=keys, alpha_pattern={k: float(v) * 2 for k, v in keys.items()})
    for module in MODULES:
        key = next((k for k in keys if re.match(rf"(.*\.)?({k})$", module)), None)
        assert config.rank_for(module) == (keys[key] if key else 8), module
        assert config.alpha_for(module) == (keys[key] * 2.0 if key else 16), module


_TOKENS = ["a", "b", "_", ".", r"\.", r"\d", r"\w", "[ab]", "[^a]", "*", "+", "?", "*?", "{1,2}", "|", "(", ")", "(?:",
           "(?i)", "(?=", "(?!", "(?<=a)", "^", "$", r"\b", r"\B", r"\Z", r"\1", "{e<=1}", "[[:alpha:]]", "{", "-", "K"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=10).map("".join), st.lists(st.text("ab._AB0d1K{}:[]\n", max_size=8), min_size=1, max_size=5))
def test_same_answers_as_re(pattern: str, names: list[str]) -> None:
    try:
        expected = re.compile(pattern)
    except re.error:
        return
    compiled = compile_bounded(pattern)
    for name in names:
        for how in ("fullmatch", "match", "search"):
            assert (getattr(compiled, how)(name, timeout=5) is None) == (getattr(expected, how)(name) is None), (pattern, name, how)
