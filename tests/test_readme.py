"""The README's self-contained example (ops and placements) runs as printed and gives the values
its comments state."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from eplb_rt.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def _ops_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    (block,) = [b for b in blocks if "from eplb_rt import Placement, Topology, formats, ops" in b]
    return block


def test_the_ops_example_runs_and_its_comments_hold(tmp_path):
    code = _ops_example().replace('"/tmp/new_placement.json"', repr(str(tmp_path / "p.json")))
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)

    placement, new = scope["placement"], scope["new"]
    np.testing.assert_array_equal(placement.phy2log[0], [0, 1, 2, 3, 4, 5, 6, 7, 0, 1])
    np.testing.assert_array_equal(scope["phy_ids"].numpy(), [[0, 3], [8, -1], [1, 7]])
    np.testing.assert_array_equal(scope["heat"][0].nonzero().flatten().numpy(), [0, 1, 3, 7, 8])
    np.testing.assert_array_equal(scope["w"].sum(1).numpy(), [0, 3, 0, 0, 3])
    # the routing tables now hold the new placement's
    np.testing.assert_array_equal(scope["log2phy"].numpy(), new.log2phy(2)[0])
    np.testing.assert_array_equal(scope["logcnt"].numpy(), new.logcnt[0])
    np.testing.assert_array_equal(new.moves(placement), [4])
    np.testing.assert_array_equal(new.expert_map(rank=1)[0], [0, 4, -1, -1, -1, 1, 2, 3])
    assert (tmp_path / "p.json").is_file()


def test_the_plan_examples_output_is_the_one_shown(tmp_path, capsys):
    """The ``plan`` command of the README writes the JSON whose start the README prints."""
    text = README.read_text()
    command = re.search(r"eplb-rt plan (--load .*?) --out /tmp/placement.json", text, re.DOTALL)
    argv = command.group(1).replace("\\\n", " ").split()
    root = README.parent
    argv = [str(root / a) if a.endswith(".npz") else a for a in argv]
    assert main(["plan", *argv, "--out", str(tmp_path / "p.json")]) == 0
    capsys.readouterr()
    shown = re.findall(r'\{"device_id": (\d), "device_expert": (\[[\d, ]+\])\}', text)
    layer = json.loads((tmp_path / "p.json").read_text())["layer_list"][0]["device_list"]
    assert len(shown) == 2
    for device, experts in shown:
        assert layer[int(device)]["device_expert"] == json.loads(experts)


def _table(pattern: str, after: str) -> dict[str, str]:
    """``{name: default}`` of the rows of the README's first table after the line starting
    with ``after`` whose first cell matches ``pattern``."""
    text = README.read_text()
    start = text.index("\n" + after)
    table = re.search(r"\n\|.*?\n(?!\|)", text[start + 1 :], flags=re.DOTALL).group(0)
    return dict(re.findall(rf"^\| `({pattern})` \| (.*?) \|", table, flags=re.MULTILINE))


def test_the_config_table_lists_every_field_with_its_default():
    import ast
    import dataclasses

    from eplb_rt.config import EplbConfig

    fields = {f.name: f for f in dataclasses.fields(EplbConfig)}
    table = _table(r"[a-z_]+", "| field | default |")
    assert set(table) == set(fields)
    config = EplbConfig()
    for name, cell in table.items():
        assert ast.literal_eval(cell.strip("`")) == getattr(config, name), name


def test_the_environment_table_lists_every_variable_with_its_default():
    from eplb_rt import envs

    table = _table(r"EPLB_RT_\w+", "Environment variables")
    assert set(table) == set(envs.VARIABLES)
    for name, var in envs.VARIABLES.items():
        cell = table[name]
        if var.default is None:
            assert cell.startswith("unset"), name
        else:
            shown = str(int(var.default)) if isinstance(var.default, bool) else str(var.default)
            assert cell == f"`{shown}`", name
