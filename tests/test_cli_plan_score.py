"""``eplb-rt plan`` and ``eplb-rt score`` through ``eplb_rt.cli.main``: outputs and exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import traces
from eplb_rt import formats
from eplb_rt.algorithms import metrics
from eplb_rt.cli import SIGPIPE_STATUS, main
from eplb_rt.commands import plan as plan_command
from eplb_rt.placement import Placement, Topology

TOY = [[600.0, 560, 120, 120, 20, 10, 10, 10]]
DEEPSEEK = traces.TRACES_DIR / "sglang_deepseek_v3"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def score_json(capsys, *argv) -> dict:
    code, out, err = run(capsys, "score", "--json", *argv)
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def toy_json(tmp_path: Path) -> Path:
    path = tmp_path / "toy.json"
    path.write_text(json.dumps({"logical_count": TOY}))
    return path


def test_plan_and_score_toy_gives_232(capsys, tmp_path, toy_json):
    out = tmp_path / "p.json"
    argv = ["--load", toy_json, "--ranks", 8, "--slots-per-rank", 2, "--policy", "deepseek"]
    code, stdout, _ = run(capsys, "plan", *argv, "--out", out)
    assert code == 0
    assert "wrote" in stdout and "policy deepseek" in stdout
    placement = formats.read_placement(out)
    assert (placement.num_ranks, placement.num_slots_per_rank) == (8, 2)
    summary = score_json(capsys, "--placement", out, "--load", toy_json)
    assert summary["layers"] == 1
    assert summary["max_rank_load_per_layer"] == [232.0]
    assert summary["par_mean"] == pytest.approx(232 / (1450 / 8))
    assert summary["par_max"] == summary["par_mean"]


def test_shares_to_an_array_file_are_refused_before_planning(
    capsys, tmp_path, toy_json, monkeypatch
):
    monkeypatch.setattr(plan_command, "plan", lambda *a, **k: pytest.fail("planned"))
    out = tmp_path / "p.npy"
    argv = ["--load", toy_json, "--ranks", 4, "--slots-per-rank", 2, "--option", "shares=true"]
    code, _, err = run(capsys, "plan", *argv, "--out", out)
    assert code == 2 and "a phy2log .npy keeps no replica shares" in err
    assert not out.exists()


def test_a_previous_with_shares_to_an_array_file_is_refused_before_planning(
    capsys, tmp_path, toy_json, monkeypatch
):
    """A layer the plan keeps keeps its shares, which the .npy cannot hold: the command failed
    after the plan, where the placement came to be written."""
    previous = tmp_path / "previous.json"
    argv = ["--load", toy_json, "--ranks", 4, "--slots-per-rank", 3, "--option", "shares=true"]
    assert run(capsys, "plan", *argv, "--out", previous)[0] == 0
    assert not formats.read_placement(previous).is_uniform
    monkeypatch.setattr(plan_command.planning, "decide", lambda *a, **k: pytest.fail("planned"))
    out = tmp_path / "p.npy"
    argv = ["--load", toy_json, "--ranks", 4, "--slots-per-rank", 3, "--previous", previous]
    code, _, err = run(capsys, "plan", *argv, "--out", out)
    assert code == 2 and "has uneven ones, which any layer the plan leaves unchanged" in err
    assert not out.exists()


def test_a_plan_with_shares_says_the_par_the_engines_serve(capsys, tmp_path, toy_json):
    """The engines split an expert's tokens evenly whatever ``slot_share`` says: the PAR they
    would serve is printed next to the plan's."""
    out = tmp_path / "p.json"
    argv = ["--load", toy_json, "--ranks", 4, "--slots-per-rank", 3, "--option", "shares=true"]
    code, said, _ = run(capsys, "plan", *argv, "--out", out)
    placement = formats.read_placement(out)
    assert code == 0 and not placement.is_uniform
    even = Placement(placement.phy2log, placement.num_experts, placement.num_ranks)
    served = metrics.par(even, np.array(TOY))
    assert served.max() > metrics.par(placement, np.array(TOY)).max()
    assert f"where this placement's in-sample PAR is mean {served.mean():.4f}" in said


def test_a_reader_that_leaves_stops_the_command_quietly(tmp_path, toy_json):
    """``eplb-rt score ... | head``: the shell's status for SIGPIPE, no error line, no traceback
    (the read end is closed before the child has imported anything, so the flush of its table
    fails)."""
    placement = tmp_path / "p.json"
    formats.write_placement(Placement.initial(1, 8, Topology(8, 2)), placement)
    argv = ["score", "--load", str(toy_json), "--placement", str(placement)]
    # Buffered, as a shell's stdout is: the table is written by the flush, after the command.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    child = subprocess.Popen(
        [sys.executable, "-m", "eplb_rt.cli", *argv], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, cwd=tmp_path, env=env,
    )  # fmt: skip
    child.stdout.close()
    with child.stderr:
        err = child.stderr.read().decode()
    assert child.wait() == SIGPIPE_STATUS and err == ""


def test_score_reads_a_npy_placement_with_ranks(capsys, tmp_path, toy_json):
    """A ``phy2log`` array records no rank count: ``--ranks`` gives it, a JSON one checks it."""
    out = tmp_path / "p.json"
    argv = ["--load", toy_json, "--ranks", 8, "--slots-per-rank", 2, "--policy", "deepseek"]
    assert run(capsys, "plan", *argv, "--out", out)[0] == 0
    np.save(tmp_path / "p.npy", formats.read_placement(out).phy2log)
    want = score_json(capsys, "--placement", out, "--load", toy_json)
    got = score_json(
        capsys, "--placement", tmp_path / "p.npy", "--load", toy_json, "--ranks", 8,
        "--previous", tmp_path / "p.npy",
    )  # fmt: skip
    assert got["max_rank_load_per_layer"] == want["max_rank_load_per_layer"] == [232.0]
    assert got["moved_fraction"] == 0.0
    code, _, err = run(capsys, "score", "--placement", tmp_path / "p.npy", "--load", toy_json)
    assert code == 2 and "(--ranks D on the command line)" in err
    code, _, err = run(capsys, "score", "--placement", out, "--load", toy_json, "--ranks", 4)
    assert code == 2 and "places experts on 8 ranks, expected 4" in err


def test_plan_reaches_the_hand_derived_optimum(capsys, tmp_path):
    # Loads 6, 2, 2, 2 on 2 ranks x 3 slots: expert 0 and one light expert get two replicas,
    # {0, 1, 2} | {0, 1, 3} holds 3 + 1 + 2 = 6 tokens per rank, the mean: PAR 1 is reachable.
    write(tmp_path, "four.npy", np.array([[6.0, 2, 2, 2]]))
    out = tmp_path / "p.json"
    argv = ["--load", tmp_path / "four.npy", "--ranks", 2, "--slots-per-rank", 3]
    assert run(capsys, "plan", *argv, "--out", out)[0] == 0
    summary = score_json(capsys, "--placement", out, "--load", tmp_path / "four.npy")
    assert summary["max_rank_load_per_layer"] == [6.0]
    assert summary["par_mean"] == 1.0
    assert summary["gap_mean"] == 0.0


def test_all_load_formats_agree(capsys, tmp_path):
    rng = np.random.default_rng(0)
    steps = rng.integers(0, 100, size=(4, 3, 10))
    np.save(tmp_path / "steps.npy", steps)
    np.save(tmp_path / "agg.npy", steps.sum(0))
    np.savez(tmp_path / "counts.npz", counts=steps)
    np.savez(tmp_path / "load.npz", load=steps.sum(0).astype(float))
    (tmp_path / "agg.json").write_text(json.dumps({"logical_count": steps.sum(0).tolist()}))
    placements = []
    for name in ("steps.npy", "agg.npy", "counts.npz", "load.npz", "agg.json"):
        out = tmp_path / f"{name}.placement.json"
        code, _, err = run(
            capsys,
            "plan",
            "--load",
            tmp_path / name,
            "--ranks",
            4,
            "--slots-per-rank",
            3,
            "--policy",
            "deepseek",  # plans on the summed load, so steps and their sum agree
            "--out",
            out,
        )
        assert code == 0, err
        placements.append(formats.read_placement(out))
    assert all(p == placements[0] for p in placements)


def test_several_loads_are_stacked(capsys, tmp_path):
    a, b = np.zeros((2, 6)), np.zeros((2, 6))
    a[:, 0], b[:, 5] = 10, 30
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    np.save(tmp_path / "ab.npy", a + b)
    two, repeated = [tmp_path / "a.npy", tmp_path / "b.npy"], ["--load", tmp_path / "b.npy"]
    cases = (
        ("two", two, []),
        ("sum", [tmp_path / "ab.npy"], []),
        ("flag twice", two[:1], repeated),
    )
    for name, files, more in cases:
        code, _, err = run(
            capsys,
            "plan",
            "--load",
            *files,
            *more,  # a repeated --load adds its files (argparse would keep the last alone)
            "--ranks",
            3,
            "--slots-per-rank",
            3,
            "--policy",
            "deepseek",  # plans on the summed load; the default takes the files as episodes
            "--out",
            tmp_path / f"{name}.json",
        )
        assert code == 0, err
    assert formats.read_placement(tmp_path / "two.json") == formats.read_placement(
        tmp_path / "sum.json"
    )
    assert formats.read_placement(tmp_path / "two.json") == formats.read_placement(
        tmp_path / "flag twice.json"
    )
    two = score_json(
        capsys,
        "--placement",
        tmp_path / "two.json",
        "--load",
        tmp_path / "a.npy",
        tmp_path / "b.npy",
    )
    one = score_json(capsys, "--placement", tmp_path / "two.json", "--load", tmp_path / "ab.npy")
    assert two["par_per_layer"] == one["par_per_layer"]


def test_deepseek_v3_plan_score_previous_and_table(capsys, tmp_path):
    out, prev = tmp_path / "p.json", tmp_path / "prev.json"
    load = DEEPSEEK / "prefill_in4096.json"
    code, stdout, _ = run(
        capsys, "plan", "--load", load, "--ranks", 32, "--slots-per-rank", 9, "--out", out
    )
    assert code == 0
    assert "[0, 1, 2]" in stdout  # zero-load dense layers are reported
    summary = score_json(capsys, "--placement", out, "--load", load)
    assert summary["layers"] == 61
    assert summary["zero_load_layers"] == [0, 1, 2]
    assert summary["par_per_layer"][:3] == [None, None, None]
    # Properties any policy must have (a better one may lower PAR): no layer below its lower
    # bound, and better than the initial layout (no EPLB) on the load it was planned for.
    assert all(gap >= -1e-12 for gap in summary["gap_per_layer"][3:])
    static = metrics.score(Placement.initial(61, 256, Topology(32, 9)), formats.read_load(load))
    assert 1.0 <= summary["par_mean"] < static["par_mean"]
    assert formats.read_placement(out).logcnt[:3].min() >= 1

    code, _, _ = run(
        capsys,
        "plan",
        "--load",
        DEEPSEEK / "prefill_in512.json",
        "--ranks",
        32,
        "--slots-per-rank",
        9,
        "--previous",
        out,
        "--option",
        "max_moved_fraction=0.5",
        "--out",
        prev,
    )
    assert code == 0
    moved = score_json(capsys, "--placement", out, "--load", load, "--previous", prev)
    assert moved["moves"] == sum(moved["moves_per_layer"]) > 0
    assert moved["moved_fraction"] == pytest.approx(moved["moves"] / (61 * 288))

    code, table, _ = run(capsys, "score", "--placement", out, "--load", load, "--previous", prev)
    assert code == 0
    assert "61 layers x 256 experts on 32 ranks x 9 slots" in table
    assert "zero-load layers (not in the mean): [0, 1, 2]" in table
    assert f"PAR mean {summary['par_mean']:.4f}" in table
    assert "moves" in table


def test_plans_on_several_threads_write_the_same_placement(capsys, tmp_path):
    load = DEEPSEEK / "prefill_in4096.json"
    shape = ("--ranks", 32, "--slots-per-rank", 9)
    paths = {n: (tmp_path / f"p{n}.json", tmp_path / f"m{n}.json") for n in (1, 3)}
    for threads, (fresh, moved) in paths.items():
        flags = ("--threads", threads)
        assert run(capsys, "plan", "--load", load, *shape, *flags, "--out", fresh)[0] == 0
        again = ("--load", DEEPSEEK / "prefill_in512.json", "--previous", fresh)
        assert run(capsys, "plan", *again, *shape, *flags, "--out", moved)[0] == 0
    for one, three in zip(paths[1], paths[3], strict=True):
        assert formats.read_placement(one) == formats.read_placement(three)


def test_an_option_given_twice_is_refused(capsys, tmp_path, toy_json):
    """The last one won, silently: which of the two was meant is the user's to say."""
    argv = ["--load", toy_json, "--ranks", 4, "--slots-per-rank", 2, "--out", tmp_path / "p.json"]
    twice = ["--option", "move_cost=0.1", "--option", "move-cost=0.2"]
    code, _, err = run(capsys, "plan", *argv, *twice)
    assert code == 2 and "option move_cost given twice ('0.1' and '0.2')" in err


def test_hierarchical_options_from_cli(capsys, tmp_path, toy_json):
    flat, hier = tmp_path / "flat.json", tmp_path / "hier.json"
    base = [
        "plan",
        "--load",
        toy_json,
        "--ranks",
        4,
        "--slots-per-rank",
        3,
        "--nodes",
        2,
        "--groups",
        4,
        "--policy",
        "deepseek",
    ]
    assert run(capsys, *base, "--out", hier)[0] == 0
    assert run(capsys, *base, "--option", "hierarchical=False", "--out", flat)[0] == 0
    grid = formats.read_placement(hier).by_rank()[0]
    # Groups {0,1}, {2,3}, ... of 2 experts: each node holds whole groups only.
    for node in (grid[:2], grid[2:]):
        groups = {int(e) // 2 for e in node.ravel()}
        assert len(groups) == 2
    assert formats.read_placement(flat) != formats.read_placement(hier)


def write(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif name.endswith(".npz"):
        np.savez(path, **content)
    else:
        np.save(path, content)
    return path


BAD_FILES = [
    ("missing_key.npz", {"other": np.ones((2, 4))}, "no key counts or load"),
    ("rank1.npy", np.ones(4), r"\[L, E\] or \[T, L, E\]"),
    ("rank4.npy", np.ones((1, 1, 2, 4)), r"\[L, E\] or \[T, L, E\]"),
    ("nan.npy", np.array([[1.0, np.nan, 1, 1]] * 2), "NaN"),
    ("negative.npy", -np.ones((2, 4)), "negative"),
    ("strings.npy", np.array([["a"] * 4] * 2), "numeric"),
    ("empty.npy", np.ones((2, 0)), "empty axis"),
    ("no_key.json", json.dumps({"counts": [[1, 2]]}), "key 'logical_count'"),
    ("list.json", json.dumps([[1, 2]]), "key 'logical_count'"),
    ("ragged.json", json.dumps({"logical_count": [[1, 2], [3]]}), "rectangular"),
    ("text.json", json.dumps({"logical_count": [["x", 2]]}), "must hold numbers"),
    ("broken.json", "{", "not valid JSON"),
    ("load.csv", "1,2\n", "unknown load file type"),
]


@pytest.mark.parametrize(("name", "content", "match"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_load_file_exits_2_with_one_line(capsys, tmp_path, name, content, match):
    path = write(tmp_path, name, content)
    formats.write_placement(Placement.initial(2, 4, Topology(2, 2)), tmp_path / "any.json")
    for argv in (
        ["plan", "--load", path, "--ranks", 2, "--slots-per-rank", 2, "--out", tmp_path / "o.json"],
        ["score", "--placement", tmp_path / "any.json", "--load", path],
    ):
        code, out, err = run(capsys, *argv)
        assert code == 2
        assert out == ""
        assert len(err.strip().splitlines()) == 1
        assert re.search(match, err), err
        assert str(path) in err or "load.csv" in err
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--policy", "nope"], "unknown policy 'nope'"),
        (["--option", "depth=3"], "has no option"),
        (["--option", "hierarchical"], "KEY=VALUE"),
        (["--policy", "deepseek", "--option", "hierarchical=3"], "true or false"),
        (["--ranks", 0], "--ranks must be >= 1, got 0"),
        (["--slots-per-rank", -2], "--slots-per-rank must be >= 1, got -2"),
        (["--groups", 0], "--groups must be >= 1, got 0"),
        (["--previous", "p.json", "--horizon", "0"], "--horizon must be a number of rows > 0"),
        (
            ["--previous", "p.json", "--lifetime", "-5"],
            "--lifetime must be a number of rows > 0 or inf",
        ),
        (
            ["--previous", "p.json", "--lifetime", "nan"],
            "--lifetime must be a number of rows > 0 or inf",
        ),
        (["--horizon", "7"], "--horizon price moves from a placement in force: give --previous"),
        (["--horizon", "7", "--lifetime", "3"], "--horizon and --lifetime price moves"),
        (["--bandwidth", "10"], "--bandwidth price moves from a placement in force"),
        (["--ranks", 1], "do not fit"),
        (["--nodes", 3], "--ranks 4 must be a multiple of --nodes 3"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
    ],
)
def test_plan_errors_exit_2(capsys, tmp_path, toy_json, argv, match):
    base = {"--ranks": 4, "--slots-per-rank": 2}
    extra = list(argv)
    if extra[0] in base:
        base[extra[0]] = extra[1]
        extra = []
    flat = [str(x) for kv in base.items() for x in kv]
    code, _, err = run(
        capsys, "plan", "--load", toy_json, *flat, *extra, "--out", tmp_path / "o.json"
    )
    assert code == 2
    assert match in err
    assert not (tmp_path / "o.json").exists()


def test_mismatched_shapes_exit_2(capsys, tmp_path, toy_json):
    out = tmp_path / "p.json"
    assert (
        run(capsys, "plan", "--load", toy_json, "--ranks", 4, "--slots-per-rank", 2, "--out", out)[
            0
        ]
        == 0
    )
    other = write(tmp_path, "other.npy", np.ones((2, 8)))
    code, _, err = run(
        capsys,
        "plan",
        "--load",
        toy_json,
        other,
        "--ranks",
        4,
        "--slots-per-rank",
        2,
        "--out",
        tmp_path / "x.json",
    )
    assert code == 2
    assert "[L, E] = [2, 8]" in err
    code, _, err = run(capsys, "score", "--placement", out, "--load", other)
    assert code == 2
    assert f"--placement {out} is for 1 layers x 8 experts" in err
    code, _, err = run(
        capsys,
        "plan",
        "--load",
        toy_json,
        "--ranks",
        8,
        "--slots-per-rank",
        2,
        "--previous",
        out,
        "--out",
        tmp_path / "x.json",
    )
    assert code == 2
    assert "places experts on 4 ranks, expected 8" in err
    wide = tmp_path / "wide.json"
    assert (
        run(capsys, "plan", "--load", toy_json, "--ranks", 8, "--slots-per-rank", 2, "--out", wide)[
            0
        ]
        == 0
    )
    code, _, err = run(capsys, "score", "--placement", out, "--load", toy_json, "--previous", wide)
    assert code == 2
    assert "wide.json: the file places experts on 8 ranks, expected 4" in err
    code, _, err = run(
        capsys, "score", "--placement", tmp_path / "missing.json", "--load", toy_json
    )
    assert code == 2
    assert "missing.json" in err


def test_an_output_that_is_an_input_is_refused_and_the_input_kept(capsys, tmp_path):
    """``--out`` on the ``--load`` trace would replace it by a placement that reads back as a
    load of other experts; ``simulate``'s JSON and plot on one path, the plot over the JSON."""
    trace = tmp_path / "trace.npy"
    np.save(trace, np.array([[[600.0, 560, 120, 120, 20, 10, 10, 10]]]))
    before = trace.read_bytes()
    small = ["--ranks", 8, "--slots-per-rank", 2]
    code, _, err = run(capsys, "plan", "--load", trace, *small, "--out", trace)
    assert code == 2 and "--out" in err and "is also --load" in err
    previous = tmp_path / "p.json"
    assert run(capsys, "plan", "--load", trace, *small, "--out", previous)[0] == 0
    code, _, err = run(capsys, "plan", "--load", trace, *small, "--previous", previous,
                       "--out", previous)  # fmt: skip
    assert code == 2 and "is also --previous" in err
    code, _, err = run(capsys, "simulate", "--load", trace, *small, "--json", trace)
    assert code == 2 and "is also --load" in err
    both = tmp_path / "x.svg"
    code, _, err = run(capsys, "simulate", "--load", trace, *small, "--json", both, "--plot", both)
    assert code == 2 and "--plot" in err and "is also --json" in err
    assert trace.read_bytes() == before and not both.exists()
    # convert in place: an SGLang map over the placement (its rank count lost), a load reshaped
    for args in (
        ("--from", "vllm-ascend", "--to", "sglang", previous, previous),
        ("--from", "load", "--to", "load", trace, trace),
    ):
        kept = args[-1].read_bytes()
        code, _, err = run(capsys, "convert", *args)
        assert code == 2 and f"OUT {args[-1]}: is also IN" in err
        assert args[-1].read_bytes() == kept


def test_a_placement_file_for_another_expert_count_is_refused_as_previous(capsys, tmp_path):
    """Refused as --placement, the same file was taken as --previous with the load's count."""
    load = tmp_path / "load.npy"
    np.save(load, np.random.default_rng(0).integers(1, 100, (3, 10)).astype(float))
    small = ["--ranks", 3, "--slots-per-rank", 4]
    placement = tmp_path / "p.json"
    assert run(capsys, "plan", "--load", load, *small, "--out", placement)[0] == 0
    doc = json.loads(placement.read_text())
    doc["eplb_rt"]["num_experts"] = 9
    other = tmp_path / "e9.json"
    other.write_text(json.dumps(doc))
    for argv in (
        ("plan", "--load", load, *small, "--out", tmp_path / "y.json", "--previous", other),
        ("score", "--placement", placement, "--previous", other, "--load", load),
    ):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "e9.json: the file records 9 experts" in err and "expected 10" in err
    assert not (tmp_path / "y.json").exists()


@pytest.mark.parametrize("load_experts", [7, 9])
def test_an_engines_map_of_another_expert_count_names_both_counts(capsys, tmp_path, load_experts):
    """vllm-ascend writes no expert count: read for the load's, a map of 8 experts said that
    expert 8 has no slot (9) or that id 7 is out of range (7)."""
    load = tmp_path / "load.npy"
    np.save(load, np.random.default_rng(0).integers(1, 100, (3, load_experts)).astype(float))
    previous = tmp_path / "va.json"
    formats.write_placement(Placement.initial(3, 8, Topology(2, 5)), previous)
    doc = json.loads(previous.read_text())
    del doc["eplb_rt"]
    previous.write_text(json.dumps(doc))
    placement = tmp_path / "p.json"
    shape = ["--ranks", 2, "--slots-per-rank", 5]
    assert run(capsys, "plan", "--load", load, *shape, "--out", placement)[0] == 0
    for argv, against in (
        (("plan", "--load", load, *shape, "--previous", previous, "--out", tmp_path / "y.json"),
         "--load"),
        (("score", "--placement", placement, "--previous", previous, "--load", load),
         "--placement"),
    ):  # fmt: skip
        code, _, err = run(capsys, *argv)
        said = f"--previous {previous}: 8 experts, but {against} has {load_experts}"
        assert code == 2 and said in err, err


def test_a_previous_placement_of_other_layers_names_both_files(capsys, tmp_path, toy_json):
    previous = tmp_path / "p.json"
    formats.write_placement(Placement.initial(2, 8, Topology(8, 2)), previous)
    argv = ["--load", toy_json, "--ranks", 8, "--slots-per-rank", 2, "--out", tmp_path / "q.json"]
    code, _, err = run(capsys, "plan", *argv, "--previous", previous)
    assert code == 2 and f"--previous {previous}: 2 layers, but --load has 1" in err
    assert "dense" not in err  # the load counts fewer layers: no dense ones to drop


def test_a_load_with_the_dense_layers_says_how_to_drop_them(capsys, tmp_path):
    """SGLang's dump counts DeepSeek-V3's three dense layers too (61 rows against a 58-layer
    map): said without naming a file or a way out."""
    dump, placement = tmp_path / "dump.json", tmp_path / "map58.json"
    dump.write_text(json.dumps({"logical_count": np.ones((61, 16), dtype=int).tolist()}))
    formats.write_placement(Placement.initial(58, 16, Topology(4, 5)), placement)
    hint = "3 dense layer(s) too drops them: `eplb-rt convert --from sglang-count --to load "
    code, _, err = run(capsys, "score", "--placement", placement, "--load", dump)
    assert code == 2 and f"--load {dump} has [L, E] = [61, 16] but --placement {placement}" in err
    assert hint + "--dense-layers 3 IN OUT.npy`" in err
    argv = [
        "--ranks",
        4,
        "--slots-per-rank",
        5,
        "--previous",
        placement,
        "--out",
        tmp_path / "o.json",
    ]
    code, _, err = run(capsys, "plan", "--load", dump, *argv)
    assert code == 2 and f"--previous {placement}: 58 layers, but --load has 61; " in err
    assert hint in err


def test_a_previous_placement_of_another_shape_names_the_flags(capsys, tmp_path, toy_json):
    previous = tmp_path / "p.json"
    formats.write_placement(Placement.initial(1, 8, Topology(4, 3)), previous)
    out = tmp_path / "q.json"
    argv = ["--load", toy_json, "--ranks", 4, "--slots-per-rank", 2, "--out", out]
    code, _, err = run(capsys, "plan", *argv, "--previous", previous)
    assert code == 2 and f"--previous {previous}: 3 slots per rank, but --slots-per-rank 2" in err
    assert run(capsys, "plan", *argv)[0] == 0
    two = tmp_path / "two.json"
    formats.write_placement(Placement.initial(2, 8, Topology(4, 2)), two)
    code, _, err = run(capsys, "score", "--placement", out, "--load", toy_json, "--previous", two)
    assert code == 2 and f"--previous {two}: " in err and f"but --placement {out}: " in err


def test_score_takes_the_rank_count_of_an_sglang_previous_from_the_placement(
    capsys, tmp_path, toy_json
):
    out = tmp_path / "p.json"
    argv = ["--load", toy_json, "--ranks", 8, "--slots-per-rank", 2, "--policy", "deepseek"]
    assert run(capsys, "plan", *argv, "--out", out)[0] == 0
    formats.write_placement(formats.read_placement(out), tmp_path / "s.json", "sglang")
    summary = score_json(
        capsys, "--placement", out, "--load", toy_json, "--previous", tmp_path / "s.json"
    )
    assert summary["moved_fraction"] == 0.0


def test_sizes_beyond_memory_exit_2_with_one_line(capsys, monkeypatch, tmp_path, toy_json):
    from eplb_rt.commands import convert

    def no_memory(*_):
        raise MemoryError("Unable to allocate 29.1 TiB")

    monkeypatch.setattr(convert.formats, "add_dense_layers", no_memory)
    code, out, err = run(
        capsys, "convert", "--from", "sglang-count", "--to", "load", toy_json, tmp_path / "x.npy"
    )
    assert code == 2 and not out
    assert err.strip().count("\n") == 0 and "out of memory (Unable to allocate 29.1 TiB)" in err


def test_sizes_beyond_an_array_exit_2_with_one_line(capsys, tmp_path, toy_json):
    """``--dense-layers 10**8`` ran out of memory (one line, above); one more power of ten and
    more passed numpy's index range: a traceback and exit 1."""
    placement = tmp_path / "p.npy"
    argv = ["--load", toy_json, "--ranks", 8, "--slots-per-rank", 2, "--out", placement]
    code, _, err = run(capsys, "plan", *argv)
    assert code == 0, err
    argv = ["convert", "--from", "npy", "--to", "sglang", "--ranks", 8, "--dense-layers", 10**20]
    code, out, err = run(capsys, *argv, placement, tmp_path / "x.json")
    assert code == 2 and not out
    assert err.strip().count("\n") == 0 and "error: a size given is too large (" in err, err


def test_a_topology_beyond_int32_slot_ids_is_refused(capsys, tmp_path, toy_json):
    with pytest.raises(ValueError, match="slot ids are int32"):
        Topology(2**20, 2**11)
    argv = ["--load", toy_json, "--ranks", 10**12, "--slots-per-rank", 1]
    code, _, err = run(capsys, "plan", *argv, "--out", tmp_path / "q.json")
    assert code == 2 and "slot ids are int32" in err


def test_plan_previous_says_which_layers_pay_and_which_go_onto_nodes(capsys, tmp_path):
    """A flat placement in force re-planned with groups on nodes: its layers are committed
    whatever they cost, and were reported as layers that pay."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "load.npy", rng.poisson(rng.gamma(0.5, 40, (1, 2, 16)), (8, 2, 16)))
    shape = ["--load", str(tmp_path / "load.npy"), "--ranks", "4", "--slots-per-rank", "5"]
    flat = str(tmp_path / "flat.json")
    assert run(capsys, "plan", *shape, "--policy", "deepseek", "--out", flat)[0] == 0
    grouped = ["--nodes", "2", "--groups", "4", "--option", "hierarchical=true"]
    code, out, _ = run(
        capsys, "plan", *shape, *grouped, "--previous", flat, "--out", str(tmp_path / "g.json")
    )
    assert code == 0
    assert "(0 of 2 layers pay: save 0.0 ms" in out
    assert "; 2 more put their expert groups on nodes)" in out
    # A horizon far past any serving run: the saving in four digits, not hundreds. (The flat
    # placement was fitted to this very window: what a re-plan of it gains is mostly the window's
    # sampling noise, which the check out of sample may refuse. One fitted to the experts'
    # loads reversed pays.)
    np.save(tmp_path / "reversed.npy", np.load(tmp_path / "load.npy")[..., ::-1])
    stale = str(tmp_path / "stale.json")
    reversed_shape = ["--load", str(tmp_path / "reversed.npy"), *shape[2:]]
    assert run(capsys, "plan", *reversed_shape, "--policy", "deepseek", "--out", stale)[0] == 0
    code, out, _ = run(
        capsys, "plan", *shape, "--previous", stale, "--horizon", "1e300", "--lifetime", "1e300",
        "--out", str(tmp_path / "h.json"),
    )  # fmt: skip
    assert code == 0
    saved = re.search(r"layers pay: save (\S+) ms", out)
    assert saved and len(saved.group(1)) <= 10 and "e+" in saved.group(1), out


def test_plan_previous_prices_moves_over_the_rows_given_by_default(capsys, tmp_path):
    """Without --horizon, the next plan is taken to come after as many rows as the load has."""
    load = np.random.default_rng(0).pareto(1.0, (5, 2, 8)) * 100
    np.save(tmp_path / "load.npy", load)
    previous = tmp_path / "p.json"
    formats.write_placement(Placement.initial(2, 8, Topology(4, 2)), previous)
    code, out, err = run(
        capsys, "plan", "--load", str(tmp_path / "load.npy"), "--ranks", "4",
        "--slots-per-rank", "2", "--previous", str(previous), "--out", str(tmp_path / "o.json"),
    )  # fmt: skip
    assert code == 0, err
    assert " over 5 rows at " in out, out


def test_plan_names_layers_that_keep_their_groups_spread_over_nodes(capsys, tmp_path):
    """A flat placement in force, planned hierarchically: layers with load put their groups on
    nodes; one without load keeps its slots, and the report names it."""
    E = 16
    load = np.zeros((1, 3, E))
    load[0, 1:] = np.arange(1, E + 1)
    spread = np.concatenate([np.arange(E), np.array([8, 0, 12, 4])])  # replicas on other nodes
    formats.write_placement(Placement(np.tile(spread, (3, 1)), E, 4), tmp_path / "flat.json")
    np.save(tmp_path / "load.npy", load)
    code, out, _ = run(
        capsys, "plan", "--load", str(tmp_path / "load.npy"), "--ranks", "4",
        "--slots-per-rank", "5", "--nodes", "2", "--groups", "4", "--policy", "deepseek",
        "--previous", str(tmp_path / "flat.json"), "--out", str(tmp_path / "out.json"),
    )  # fmt: skip
    assert code == 0
    assert "2 more put their expert groups on nodes" in out
    assert "1 layer(s) keep their expert groups spread over nodes" in out
    assert out.rstrip().endswith("max_moved_fraction): [0]")
