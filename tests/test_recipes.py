"""docs/recipes.md and the CUB presets say the same thing: every row that names a config field has
its "ours" value in the preset, so neither can change without the other."""
import inspect
import re
import tomllib
from pathlib import Path

import pytest

import bgtutorial
from bgtutorial.config import Config, load_config

RECIPES = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"
FIELDS = {f for f in Config.__dataclass_fields__}


def _tables() -> dict[str, list[dict[str, str]]]:
    """``{preset: [row as {column: text}]}`` for every table under a ``<!-- preset: name -->`` marker."""
    out: dict[str, list[dict[str, str]]] = {}
    preset, header = None, None
    for line in RECIPES.read_text().splitlines():
        marker = re.match(r"<!-- preset: (\S+) -->", line)
        if marker:
            preset, header = marker.group(1), None
            out[preset] = []
            continue
        if preset is None:
            continue
        if not line.startswith("|"):
            if header is not None:
                preset = None                  # the table ended
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set(line) <= set("|- "):
            out[preset].append(dict(zip(header, cells)))
    return out


def _literal(text: str):
    return tomllib.loads(f"v = {text}")["v"]


def _checked_rows():
    for preset, rows in _tables().items():
        for row in rows:
            field = re.fullmatch(r"`([\w.]+)`", row["field"])
            if field:
                yield preset, field.group(1), row["ours"]


def test_every_preset_table_is_found_and_names_real_fields():
    tables = _tables()
    assert {"cub-resnet50", "cub-resnet50-batchformer", "cub-vits", "cub-vits-bgformer"} <= set(tables)
    rows = list(_checked_rows())
    assert len(rows) >= 50
    for preset, field, _ in rows:
        assert field.split(".")[0] in FIELDS, f"{preset}: {field} is not a config field"
        for row in tables[preset]:
            assert row["source"].strip() or row["field"] == "`m`", f"{preset}: row {row['field']} names no source"


@pytest.mark.parametrize("preset,field,ours", list(_checked_rows()))
def test_preset_matches_the_recipe_table(preset, field, ours):
    cfg = load_config(preset)
    name, _, key = field.partition(".")
    default = re.fullmatch(r"module default (.+)", ours)
    if key:                                      # a batch-module option: module_kwargs.<key>
        assert name == "module_kwargs"
        if default:
            assert key not in cfg.module_kwargs, f"{preset} sets {key}; the table says the default"
            module_cls = {"batchformer": bgtutorial.BatchFormer, "bgformer": bgtutorial.BGFormer}[cfg.batch_module]
            assert inspect.signature(module_cls).parameters[key].default == _literal(default.group(1))
        else:
            assert cfg.module_kwargs[key] == pytest.approx(_literal(ours.strip("`")))
        return
    expected = _literal(ours.strip("`"))
    if isinstance(expected, float):
        expected = pytest.approx(expected)
    assert getattr(cfg, name) == expected, f"{preset}.{name} = {getattr(cfg, name)!r}, docs/recipes.md says {ours}"
