"""The Study: a validated config parsed once into typed, frozen objects that hash as the dict did."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from fewstep.core.config import config_hash, validate
from fewstep.core.study import Study, parse_config


def test_study_holds_the_validated_config_typed(raw_demo):
    config = validate(copy.deepcopy(raw_demo))
    study = Study.of(config)
    assert study.to_dict() == config and study.config_hash == config_hash(config)
    assert study.sweep == "demo" and study.weights == "tiny" and study.seeds == (0,)
    dev = study.backbones["flux-dev"]
    assert (dev.id, dev.model, dev.family, dev.steps, dev.guidance) == (
        "flux-dev",
        "flux-dev",
        "flux",
        (1, 2, 4, 8),
        3.5,
    )
    assert dev["max_sequence_length"] == 512  # a family's own key, read through the mapping
    assert study.backbones["sd15"].guidance is None and study.backbones["sd15"]["resolution"] == 64
    assert study.adapters["sd-style"].kind == "ip_adapter" and study.adapters["sd-style"].role == "style"
    assert study.adapters["infusenet-aes"]["variant"] == "aes_stage2"  # the schema's default
    assert study.scoring.lpips_net == "alex" and study.memory.fp8_weights is False
    assert [p.id for p in study.prompts] == [p["id"] for p in config["prompts"]]
    assert study.identity("astronaut").heldout == ("builtin:astronaut~mirrored",)
    assert study.reference("coffee").role == "object" and study.prompt("nope") is None
    assert study.cells[0].accelerations == ("eager",) and study.cells[0].steps is None
    assert study.comparison.candidate == "flux-schnell/infusenet-aes/4"


def test_study_cannot_be_changed(raw_demo):
    raw = copy.deepcopy(raw_demo)
    raw["adapters"]["blocks"] = {
        "kind": "ip_adapter",
        "role": "style",
        "scale": {"up": {"block_0": [0.0, 1.0]}},
    }
    study = parse_config(raw)
    with pytest.raises(dataclasses.FrozenInstanceError):
        study.sweep = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        study.backbones["x"] = study.backbones["sd15"]  # type: ignore[index]
    with pytest.raises(TypeError):
        study.adapters["blocks"]["kind"] = "none"  # type: ignore[index]
    scale = study.adapters["blocks"]["scale"]  # a plain dict, as a family's code expects
    assert isinstance(scale, dict) and isinstance(scale["up"]["block_0"], list)
    scale["up"]["block_0"][0] = 9.0
    assert study.adapters["blocks"]["scale"] == {"up": {"block_0": [0.0, 1.0]}}
    assert study.to_dict()["adapters"]["blocks"]["scale"]["up"]["block_0"] == [0.0, 1.0]


def test_grid_jobs_analysis_and_tracking_read_the_typed_study():
    """No raw ``config["..."]`` reads come back where the Study is parsed once and handed down
    (analysis/estimate.py is converted with engineer F's rework of it)."""
    import re
    from pathlib import Path

    import fewstep

    root = Path(fewstep.__file__).parent
    raw = re.compile(r"""config(\[["']|\.get\()""")
    found = [
        f"{path.relative_to(root)}:{number}"
        for unit in ("grid", "jobs", "analysis", "tracking")
        for path in sorted((root / unit).glob("*.py"))
        if path.name != "estimate.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if raw.search(line)
    ]
    assert found == []


def test_each_comparison_knows_its_config_key(raw_demo):
    """One pair is ``comparison``, a list's are ``comparison[i]``: the key a bad pair's error names."""
    pair = {"baseline": "flux-dev/infusenet-aes/8", "candidate": "flux-schnell/infusenet-aes/4"}
    raw_demo["comparison"] = pair
    assert [c.key for c in parse_config(copy.deepcopy(raw_demo)).comparisons] == ["comparison"]
    raw_demo["comparison"] = [pair, pair]
    keys = [c.key for c in parse_config(raw_demo).comparisons]
    assert keys == ["comparison[0]", "comparison[1]"]
