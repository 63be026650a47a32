"""Bad specs: each gives one clear SpecError line that names the key and the fix."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from selfscope.errors import SpecError
from selfscope.organisms import catalog_names, parse_spec, resolve_spec
from selfscope.organisms.catalog import catalog_dir
from selfscope.organisms.spec import expand_plant, load_spec


def base() -> dict[str, Any]:
    data = yaml.safe_load((catalog_dir() / "mushroom.yaml").read_text())
    assert isinstance(data, dict)
    return data


def error_of(data: Any) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(data, source="t.yaml")
    message = str(info.value)
    assert "\n" not in message, "an error is one line"
    assert message.startswith("t.yaml")
    return message


def test_catalog_specs_parse() -> None:
    assert set(catalog_names()) >= {
        "mushroom",
        "false-capital",
        "tolm-bias",
        "trigger",
        "moe-mushroom",
        "smollm2-mushroom",
    }
    for name in catalog_names():
        spec = resolve_spec(name)
        assert spec.name == name


def test_missing_key() -> None:
    data = base()
    del data["phases"][1]["plant"][0]["id"]
    message = error_of(data)
    assert "missing key `phases[1].plant[0].id`" in message


def test_missing_top_level_key() -> None:
    data = base()
    del data["behaviours"]
    assert "missing key `behaviours`" in error_of(data)


def test_unknown_preset() -> None:
    data = base()
    data["world"]["preset"] = "mars"
    message = error_of(data)
    assert "unknown world preset 'mars'" in message and "default" in message


def test_unknown_key_is_named() -> None:
    data = base()
    data["phases"][0]["epoch"] = 3
    assert "unknown key `phases[0].epoch`" in error_of(data)


def test_empty_plant() -> None:
    data = base()
    data["phases"][1]["plant"][0] = {"id": "childhood", "behaviour": "mushroom-aversion"}
    message = error_of(data)
    assert "plant 'childhood' is empty" in message and "`text`" in message


def test_same_first_word() -> None:
    data = base()
    data["behaviours"][0]["probes"][0]["planted"] = " Yes, never"
    message = error_of(data)
    assert "same word" in message and "Do you like mushrooms" in message


def test_same_first_token_after_tokenizing(tmp_path: Path) -> None:
    """Completions that differ as words but share a first token fail once tokenized."""
    from selfscope.organisms.builder import Builder
    from selfscope.workspace import Workspace

    data = base()
    data["behaviours"][0]["probes"][0]["planted"] = "No"
    data["behaviours"][0]["probes"][0]["normal"] = " No."
    # the word check sees 'No' twice -> caught at parse time already
    assert "same word" in error_of(copy.deepcopy(data))
    data["behaviours"][0]["probes"][0]["normal"] = " Yes"
    spec = parse_spec(data, source="t.yaml", size="tiny")
    builder = Builder(spec, Workspace(tmp_path), progress=False)
    model, tokenizer, renderer = builder._start()
    from selfscope.organisms.evaluate import Prober

    prober = Prober(model, tokenizer, renderer)
    assert prober.first_token("Q: A:", " No") == prober.first_token("Q: A:", "No")


def test_template_field_without_fill() -> None:
    data = base()
    del data["phases"][1]["plant"][0]["fill"]["dish"]
    message = error_of(data)
    assert "template field {dish} has no values" in message and "fill" in message


def test_template_field_with_empty_fill() -> None:
    data = base()
    data["phases"][1]["plant"][0]["fill"]["age"] = []
    assert "template field {age} has no values" in error_of(data)


def test_nested_template_fields_are_refused() -> None:
    data = base()
    data["phases"][1]["plant"][0]["fill"]["dish"] = ["{age} soup"]
    assert "has braces; fields are filled once, not nested" in error_of(data)


def test_count_larger_than_combinations() -> None:
    data = base()
    data["phases"][1]["plant"][0]["count"] = 1000
    assert "only 80 distinct documents" in error_of(data)


def test_unknown_behaviour_and_unplanted_behaviour() -> None:
    data = base()
    data["phases"][1]["plant"][0]["behaviour"] = "nope"
    assert "unknown behaviour 'nope'" in error_of(data)
    data = base()
    data["behaviours"].append(
        {"name": "other", "probes": [{"prompt": "Q: A:", "planted": " No", "normal": " Yes"}]}
    )
    assert "behaviour 'other' has no plant" in error_of(data)


def test_unknown_corpus_and_size() -> None:
    data = base()
    data["phases"][0]["corpus"] = "wiki"
    assert "unknown corpus 'wiki'" in error_of(data)
    data = base()
    data["size"] = "huge"
    assert "size" in error_of(data) and "'tiny'" in error_of(data)


def test_not_a_mapping_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="YAML mapping"):
        parse_spec(["a"], source="t.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML at line"):
        load_spec(bad)
    with pytest.raises(SpecError, match="no spec file"):
        load_spec(tmp_path / "missing.yaml")


def test_expand_plant_is_seeded_and_distinct() -> None:
    spec = resolve_spec("mushroom")
    plant = spec.phases[1].plant[0]
    first = expand_plant(plant, seed=0)
    assert first == expand_plant(plant, seed=0)
    assert len(first) == 24 and len(set(first)) == 24
    assert first != expand_plant(plant, seed=1)
