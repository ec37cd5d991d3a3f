"""Every ``eplb-rt`` command checks its arguments and output paths before it starts work.

Each case runs the user's command line and expects exit status 2, one line on stderr naming the
problem, nothing on stdout and no output file; or, where the run can go on, one warning line.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from eplb_rt import formats
from eplb_rt.cli import main
from eplb_rt.config import EplbConfig
from eplb_rt.placement import Placement, Topology


@pytest.fixture
def files(tmp_path):
    """A valid load (2 layers x 8 experts), an all-zero one and a placement for them."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "load.npy", rng.integers(1, 50, size=(5, 2, 8)))
    np.save(tmp_path / "zero.npy", np.zeros((2, 8)))
    formats.write_placement(Placement.initial(2, 8, Topology(2, 4)), tmp_path / "p.json")
    return tmp_path


def fails(capsys, argv: list, message: str) -> None:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"eplb-rt {argv[0]}: error: ")
    assert message in err, err


PLAN = ["plan", "--ranks", 2, "--slots-per-rank", 5]


@pytest.mark.parametrize(
    ("out", "message"),
    [(".", "is a directory"), ("missing/p.json", "does not exist"), ("p.json/", "is a directory")],
)
def test_plan_output_path_checked_first(capsys, files, out, message):
    # The load is garbage too: the output path is checked before any file is read.
    (files / "bad.npy").write_bytes(b"garbage")
    fails(capsys, [*PLAN, "--load", files / "bad.npy", "--out", f"{files}/{out}"], message)
    assert not (files / "missing").exists()


def test_plan_output_folder_not_writable(capsys, files, monkeypatch):
    (files / "ro").mkdir(mode=0o500)
    if os.geteuid() == 0:  # root may write to any folder: the folder says it may not
        readonly, access = str(files / "ro"), os.access
        monkeypatch.setattr(os, "access", lambda p, m: os.fspath(p) != readonly and access(p, m))
    fails(capsys, [*PLAN, "--load", files / "load.npy", "--out", files / "ro/p.json"], "writable")
    assert not (files / "ro/p.json").exists()


def test_plan_output_a_link_to_a_missing_folder_or_a_file_it_may_not_write(
    capsys, files, monkeypatch
):
    """Both passed the check, and the command planned (a minute with a cold kernel cache) to
    fail at the write with a message naming no flag."""
    (files / "dangling.json").symlink_to(files / "missing" / "x.json")
    argv = [*PLAN, "--load", files / "load.npy", "--out"]
    fails(capsys, [*argv, files / "dangling.json"], "does not exist")
    locked = files / "locked.json"
    locked.write_text("{}")
    locked.chmod(0o444)
    if os.geteuid() == 0:  # root may write any file: the file says it may not
        access = os.access
        real = os.path.realpath(locked)
        monkeypatch.setattr(os, "access", lambda p, m: os.path.realpath(p) != real and access(p, m))
    fails(capsys, [*argv, locked], "--out " + str(locked) + ": the file exists and is not writable")
    assert locked.read_text() == "{}"


def test_plan_output_a_hard_link_of_its_load_is_refused(capsys, files):
    """A hard link names the same file: written in place, the trace was replaced by the
    placement (now a new file would take the link's name, the trace's name keeping it)."""
    trace = files / "trace.json"
    trace.write_text(json.dumps({"logical_count": np.ones((2, 8)).tolist()}))
    os.link(trace, files / "link.json")
    argv = [*PLAN, "--load", trace, "--out", files / "link.json"]
    fails(capsys, argv, "link.json: is also --load")
    assert "logical_count" in trace.read_text()


@pytest.mark.parametrize("command", ["plan", "score", "simulate"])
def test_all_zero_load_is_an_error(capsys, files, command):
    argv = {
        "plan": [*PLAN, "--out", files / "o.json"],
        "score": ["score", "--placement", files / "p.json"],
        "simulate": ["simulate", "--ranks", 2, "--slots-per-rank", 4],
    }[command]
    fails(capsys, [*argv, "--load", files / "zero.npy"], "every count is zero; nothing to balance")
    assert not (files / "o.json").exists()


def test_groups_that_cannot_be_hierarchical_warn_and_plan_flat(capsys, tmp_path):
    np.save(tmp_path / "load.npy", np.arange(1.0, 65.0).reshape(1, 64))
    out, flat = tmp_path / "p.json", tmp_path / "flat.json"
    argv = "plan --ranks 8 --slots-per-rank 9 --nodes 1 --groups 5".split()
    assert main([*argv, "--load", str(tmp_path / "load.npy"), "--out", str(out)]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "eplb-rt plan: warning: --groups 5: hierarchical placement is not possible (64 experts "
        "do not split into 5 equal groups); planning flat, as with --groups 1"
    ]
    argv[argv.index("5")] = "1"
    assert main([*argv, "--load", str(tmp_path / "load.npy"), "--out", str(flat)]) == 0
    assert formats.read_placement(out) == formats.read_placement(flat)


@pytest.mark.parametrize(
    "case",
    [
        (4, 1, 9, "all ranks are on one node"),
        (4, 8, 9, "4 groups do not spread evenly over 8 nodes"),
        (8, 4, 17, "17 slots per rank > 16 experts per node"),
    ],
)
def test_hierarchy_warning_says_why(capsys, tmp_path, case):
    groups, nodes, slots, why = case
    np.save(tmp_path / "load.npy", np.arange(1.0, 65.0).reshape(1, 64))
    argv = ["plan", "--ranks", 8, "--slots-per-rank", slots, "--nodes", nodes, "--groups", groups]
    assert (
        main(
            [str(a) for a in [*argv, "--load", tmp_path / "load.npy", "--out", tmp_path / "p.json"]]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert f"not possible ({why}); planning flat" in err


def test_possible_hierarchy_does_not_warn(capsys, tmp_path):
    np.save(tmp_path / "load.npy", np.arange(1.0, 65.0).reshape(1, 64))
    argv = "plan --policy deepseek --ranks 8 --slots-per-rank 9 --nodes 2 --groups 8 --load"
    out = ["--out", str(tmp_path / "p.json")]
    assert main([*argv.split(), str(tmp_path / "load.npy"), *out]) == 0
    assert capsys.readouterr().err == ""


def test_groups_with_a_flat_policy_warn(capsys, tmp_path):
    """The default policy plans flat unless its ``hierarchical`` option is on: ``--groups``
    says so, and the option turns the warning and the flat plan off."""
    np.save(tmp_path / "load.npy", np.arange(1.0, 65.0).reshape(1, 64))
    argv = "plan --ranks 8 --slots-per-rank 9 --nodes 2 --groups 8 --load".split()
    argv += [str(tmp_path / "load.npy")]
    assert main([*argv, "--out", str(tmp_path / "p.json")]) == 0
    out, err = capsys.readouterr()
    assert f"policy {EplbConfig.policy}" in out
    assert err == (
        f"eplb-rt plan: warning: --groups 8: policy {EplbConfig.policy!r} plans flat (its "
        "option hierarchical is off); --option hierarchical=true places whole groups on nodes\n"
    )
    on = [*argv, "--option", "hierarchical=true", "--out", str(tmp_path / "h.json")]
    assert main(on) == 0
    assert capsys.readouterr().err == ""
    flat, grouped = (formats.read_placement(tmp_path / f) for f in ("p.json", "h.json"))
    assert flat != grouped
    node = np.arange(72) // 36
    for group in range(8):  # each group of 8 experts on one node
        assert len(set(node[np.isin(grouped.phy2log[0], np.arange(8) + 8 * group)])) == 1


def test_simulate_warns_for_each_policy_that_plans_flat_with_groups(capsys, tmp_path):
    np.save(tmp_path / "load.npy", np.arange(1.0, 1 + 4 * 64).reshape(4, 1, 64))
    argv = "simulate --ranks 8 --slots-per-rank 9 --nodes 2 --groups 8 --interval 2".split()
    argv += ["--load", str(tmp_path / "load.npy"), "--policies", "swift,deepseek"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "policy 'swift' plans flat" in err and "deepseek" not in err  # deepseek: on by default
    # The advice is simulate's option syntax (plan's, without the policy, is refused here).
    assert "--option swift.hierarchical=true places whole groups" in err, err
    assert main([*argv, "--option", "swift.hierarchical=true"]) == 0
    assert "plans flat" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--policies", ""], "--policies '' names no policy; give one or more of"),
        (["--policies", " , "], "names no policy"),
        (["--json", "{dir}"], "--json {dir}: is a directory"),
        (["--json", "{dir}/no/x.json"], "does not exist"),
        (["--plot", "{dir}/x.txt"], "expected a .png, .pdf or .svg file name"),
        (["--plot", "{dir}/no/x.png"], "does not exist"),
        (["--save-placements", "{dir}/load.npy"], "is a file; expected a directory"),
        (["--save-placements", "{dir}/no/deeper"], "does not exist"),
    ],
)
def test_simulate_checks_before_it_runs(capsys, files, extra, message):
    extra = [x.replace("{dir}", str(files)) for x in extra]
    argv = ["simulate", "--load", files / "load.npy", "--ranks", 2, "--slots-per-rank", 4]
    fails(capsys, [*argv, *extra], message.replace("{dir}", str(files)))


def test_simulate_names_an_unknown_policy_before_any_file_is_read(capsys, files):
    argv = ["simulate", "--load", files / "missing.npy", "--ranks", 2, "--slots-per-rank", 4]
    fails(capsys, [*argv, "--policies", "deepseek,nope"], "unknown policy 'nope'")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ranks", "0"], "--ranks must be >= 1, got 0"),
        (["--experts", "-3"], "--experts must be >= 1, got -3"),
        (["--dense-layers", "-1"], "--dense-layers must be >= 0, got -1"),
    ],
)
def test_convert_checks_numbers(capsys, files, extra, message):
    argv = ["convert", "--from", "vllm-ascend", "--to", "sglang", files / "p.json"]
    fails(capsys, [*argv, files / "o.json", *extra], message)
    assert not (files / "o.json").exists()


def test_convert_output_is_a_directory(capsys, files):
    argv = ["convert", "--from", "vllm-ascend", "--to", "sglang", files / "p.json", files]
    fails(capsys, argv, "is a directory; expected a file path")
    assert json.loads((files / "p.json").read_text())["moe_layer_count"] == 2


def test_score_placement_that_is_a_directory(capsys, files):
    fails(capsys, ["score", "--placement", files, "--load", files / "load.npy"], "Is a directory")


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--json=", "--json: empty path; expected a file"),
        ("--plot=", "--plot: empty path; expected a file"),
        ("--save-placements=", "--save-placements: empty path; expected a directory"),
    ],
)
def test_simulate_empty_output_path_is_an_error(capsys, files, flag, message):
    # argparse takes `--json=` as the path "": without the check, nothing would be written.
    argv = ["simulate", "--load", files / "load.npy", "--ranks", 2, "--slots-per-rank", 4]
    fails(capsys, [*argv, flag], message)


def test_plan_empty_out_is_an_error(capsys, files):
    fails(capsys, [*PLAN, "--load", files / "load.npy", "--out="], "--out: empty path")


@pytest.mark.parametrize(
    ("folder", "flag", "path"),
    [
        ("windows", "--load", "windows/step_1.npy"),  # a window of an earlier run, replayed
        ("deepseek", "--json", "deepseek/sim.json"),
        ("none", "--plot", "none/sim.png"),
    ],
)
def test_simulate_save_placements_must_not_overlap_inputs_or_outputs(
    capsys, files, folder, flag, path
):
    """``--save-placements DIR`` writes ``DIR/windows/step_N.npy`` and ``DIR/POLICY/step_N.json``:
    a load there would be replaced by a window, an output there could replace a saved file."""
    out = files / "saved"
    for name in {"windows", folder}:  # the folders of an earlier run
        (out / name).mkdir(parents=True)
    np.save(out / "windows/step_1.npy", np.load(files / "load.npy"))
    before = sorted(out.rglob("*"))
    load = out / path if flag == "--load" else files / "load.npy"
    argv = ["simulate", "--load", load, "--ranks", 2, "--slots-per-rank", 4, "--policies"]
    argv += ["deepseek", "--save-placements", out]
    if flag != "--load":
        argv += [flag, out / path]
    where = f"is in {out}/{folder}, which --save-placements {out} writes step files into"
    fails(capsys, argv, f"{flag} {out / path}: {where}")
    assert np.load(out / "windows/step_1.npy").shape == (5, 2, 8)  # the trace is intact
    assert sorted(out.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("flag", ["--json", "--plot"])
def test_simulate_an_output_that_is_the_save_placements_folder_is_refused(capsys, files, flag):
    """The same new path for an output and ``--save-placements``: refused before the replay
    (the folder made by the saved steps failed the output's write after the whole run)."""
    out = files / ("clash.png" if flag == "--plot" else "clash")
    argv = ["simulate", "--load", files / "load.npy", "--ranks", 2, "--slots-per-rank", 4]
    argv += ["--policies", "deepseek", "--save-placements", out, flag, out]
    fails(capsys, argv, f"{flag} {out}: is that folder, which --save-placements {out} writes")
    assert not out.exists()


def test_simulate_save_placements_folder_that_is_a_file(capsys, files):
    (files / "saved").mkdir()
    (files / "saved" / "deepseek").write_text("not a folder")
    argv = ["simulate", "--load", files / "load.npy", "--ranks", 2, "--slots-per-rank", 4]
    argv += ["--policies", "deepseek", "--save-placements", files / "saved"]
    fails(capsys, argv, f"{files / 'saved' / 'deepseek'} is a file; expected a directory")


def test_simulate_save_placements_leaves_other_folders_alone(capsys, files):
    """Only the folders written are refused: ``none`` without the baseline row is not one."""
    (files / "saved" / "none").mkdir(parents=True)
    argv = ["simulate", "--load", files / "load.npy", "--ranks", 2, "--slots-per-rank", 4]
    argv += ["--policies", "deepseek", "--no-baseline", "--save-placements", files / "saved"]
    assert main([str(a) for a in [*argv, "--json", files / "saved/none/sim.json"]]) == 0
    capsys.readouterr()
    assert json.loads((files / "saved/none/sim.json").read_text())["saved"]["placements"]


@pytest.mark.parametrize("command", ["plan", "simulate"])
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--bandwidth", "1e300"], "--bandwidth 1e+300 GB/s is inf bytes/s: expected a finite"),
        (["--token-us", "1e-320"], "us is 0 s: expected a finite number > 0 in s too"),
        (["--expert-bytes", "1.5"], "--expert-bytes must be a whole number of bytes"),
        (["--expert-bytes", "1e20"], "--expert-bytes must be a whole number of bytes below 2**53"),
    ],
)
def test_costs_are_checked_in_the_models_units_naming_the_flag(
    capsys, files, command, extra, message
):
    """A price that passes as given but not once converted (1e300 GB/s is inf bytes/s) is the
    flag's error, not CostModel's; byte counts are whole numbers."""
    argv = {
        "plan": [*PLAN, "--out", files / "o.json"],
        "simulate": ["simulate", "--ranks", 2, "--slots-per-rank", 4],
    }[command]
    fails(capsys, [*argv, "--load", files / "load.npy", *extra], message)
    assert not (files / "o.json").exists()


@pytest.mark.parametrize("command", ["simulate", "demo"])
def test_plot_without_matplotlib_is_refused_before_any_work(capsys, files, monkeypatch, command):
    """matplotlib is an extra (`eplb_rt[plot]`): without it `--plot` is refused at once, naming
    what to install, instead of failing after the run."""
    import importlib.util

    find_spec = importlib.util.find_spec

    def without_matplotlib(name, *args):
        return None if name == "matplotlib" else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_matplotlib)
    argv = [command, "--plot", files / "out.png"]
    if command == "simulate":
        argv += ["--load", files / "load.npy", "--ranks", 2, "--slots-per-rank", 4]
    fails(capsys, argv, "needs matplotlib, which is not installed; pip install 'eplb_rt[plot]'")
    assert not (files / "out.png").exists()
