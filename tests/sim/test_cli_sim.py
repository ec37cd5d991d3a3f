"""``eplb-rt simulate`` and ``eplb-rt convert`` on small files: outputs parsed and checked."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from benchmarks import traces
from eplb_rt import cli, formats, planning
from eplb_rt.commands import simulate as simulate_command
from eplb_rt.config import EplbConfig
from eplb_rt.data import ESFT_DIR
from eplb_rt.placement import Placement
from eplb_rt.sim import report
from tests.workloads import task_aggregates


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _simulate(capsys, loads: list, options: str, *paths) -> tuple[int, str, str]:
    """``eplb-rt simulate --load LOADS OPTIONS PATHS`` (OPTIONS: a plain string of flags)."""
    return _run(capsys, "simulate", "--load", *loads, *options.split(), *paths)


def _skewed(num_steps: int, num_layers: int, num_experts: int, seed: int = 0) -> np.ndarray:
    """Poisson token counts around a Zipf skew that stays put (a skew a policy can learn)."""
    rng = np.random.default_rng(seed)
    zipf = 400.0 / np.arange(1, num_experts + 1) ** 1.2
    mean = np.stack([zipf[rng.permutation(num_experts)] for _ in range(num_layers)])
    return rng.poisson(np.broadcast_to(mean, (num_steps, *mean.shape))).astype(np.float64)


def _table(out: str) -> dict[str, list[str]]:
    """Rows of the markdown table on stdout, by policy name (first word of the first cell)."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and not line.startswith("| policy") and len(cells) == 12:
            rows[cells[0].split()[0]] = cells
    return rows


@pytest.fixture
def series(tmp_path):
    path = tmp_path / "series.npy"
    np.save(path, _skewed(13, 3, 16))
    return path


def test_simulate_prints_table_and_writes_json_and_png(tmp_path, capsys, series):
    out_json, out_png = tmp_path / "sim.json", tmp_path / "sim.png"
    code, out, _ = _simulate(
        capsys,
        [series],
        "--ranks 4 --slots-per-rank 5 --policies deepseek --interval 3 --episodes 2 "
        "--expert-bytes 1000",
        "--json",
        out_json,
        "--plot",
        out_png,
    )
    assert code == 0
    rows = _table(out)
    assert set(rows) == {"none", "deepseek"}
    doc = json.loads(out_json.read_text())
    assert doc["setup"]["steps"] == 13 and doc["setup"]["window"] == 6
    assert doc["setup"]["workloads"] == [{"label": "series", "steps": 13}]
    for name, cells in rows.items():
        s = doc["policies"][name]["summary"]
        assert s["cycles"] == 4  # scored windows start at steps 3, 6, 9, 12
        assert float(cells[1]) == pytest.approx(s["par_mean"], abs=5e-4)
        assert float(cells[6]) == pytest.approx(s["moves_per_cycle"], abs=0.051)
        assert float(cells[10]) == pytest.approx(s["par_in_sample_mean"], abs=5e-4)
        assert float(cells[11]) == pytest.approx(s["throughput_vs_none"], abs=5e-4)
        assert float(cells[8]) == pytest.approx(1e3 * s["migration_s_per_cycle"], abs=0.051)
        assert s["bytes_total"] == 1000 * s["moves_total"]
        assert 1.0 <= s["bound_par_mean"] <= s["par_mean"]
        assert [c["start"] for c in doc["policies"][name]["cycles"]] == [3, 6, 9, 12]
    assert doc["policies"]["none"]["summary"]["moves_total"] == 0
    assert doc["policies"]["none"]["summary"]["throughput_vs_none"] == 1.0
    # 1000-byte experts at 50 GB/s: 20 ns per moved slot, so the gate lets the balancer move.
    assert doc["setup"]["bandwidth"] == 50e9 and doc["setup"]["token_seconds"] == 2.5e-7
    # The balancer beats the placement that never moves on this skewed series.
    assert (
        doc["policies"]["deepseek"]["summary"]["par_mean"]
        < doc["policies"]["none"]["summary"]["par_mean"]
    )
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_aggregate_workloads_played_in_sequence(tmp_path, capsys):
    paths = []
    for i, name in enumerate(("in512", "in1024", "in4096")):
        path = tmp_path / f"{name}.json"
        formats.write_load(_skewed(1, 2, 8, seed=i)[0], path, "sglang-count")
        paths.append(path)
    out_json = tmp_path / "sim.json"
    code, out, _ = _simulate(
        capsys, paths, "--ranks 2 --slots-per-rank 5 --policies deepseek", "--json", out_json
    )
    assert code == 0, out
    doc = json.loads(out_json.read_text())
    # Aggregates: interval 1, plan on one workload, score on the next.
    assert doc["setup"]["interval"] == 1
    cycles = doc["policies"]["deepseek"]["cycles"]
    assert [c["label"] for c in cycles] == ["in1024", "in4096"]
    # --load given once per file plays the same sequence
    flags = "--ranks 2 --slots-per-rank 5 --policies deepseek".split()
    loads = [x for path in paths for x in ("--load", path)]
    code, out, _ = _run(capsys, "simulate", *loads, *flags, "--json", out_json)
    assert code == 0, out
    again = json.loads(out_json.read_text())["policies"]["deepseek"]["cycles"]
    assert [(c["label"], c["par_per_layer"]) for c in again] == [
        (c["label"], c["par_per_layer"]) for c in cycles
    ]


def test_default_interval_from_each_files_own_steps(tmp_path, capsys):
    """Aggregates given again and again are still aggregates: interval 1, as documented (the
    steps of repeated files once counted together, re-planning every 2 steps); each file given
    more than once is labelled by its position, so one given twice in a row is two parts."""
    a, b, j = tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "sim.json"
    np.save(a, _skewed(1, 1, 8, seed=1)[0])  # [L, E]
    np.save(b, _skewed(1, 1, 8, seed=2))  # [1, L, E]
    code, out, err = _simulate(capsys, [a, b] * 16, "--ranks 2 --slots-per-rank 5", "--json", j)
    assert code == 0, err
    doc = json.loads(j.read_text())
    assert doc["setup"]["interval"] == 1 and "re-planned every 1 step from" in out
    labels = [f"{'ab'[i % 2]}#{i + 1}" for i in range(32)]
    assert doc["setup"]["workloads"] == [{"label": x, "steps": 1} for x in labels]
    code, out, err = _simulate(capsys, [a, a, b], "--ranks 2 --slots-per-rank 5", "--json", j)
    assert code == 0, err
    assert "[a#1 (1 step), a#2 (1 step), b (1 step)]" in out
    cycles = json.loads(j.read_text())["policies"]["none"]["cycles"]
    assert [c["label"] for c in cycles] == ["a#2", "b"]
    # A file named like a numbered part: each part is its path and position, none merged.
    c = tmp_path / "a#2.npy"
    np.save(c, _skewed(1, 1, 8, seed=3)[0])
    code, out, err = _simulate(capsys, [a, a, c], "--ranks 2 --slots-per-rank 5", "--json", j)
    assert code == 0, err
    parts = [w["label"] for w in json.loads(j.read_text())["setup"]["workloads"]]
    assert parts == [f"{a}#1", f"{a}#2", f"{c}#3"]


@pytest.mark.parametrize(("steps", "interval"), [((64,), 4), ((1, 32), 2)])
def test_default_interval_is_a_sixteenth_of_a_series(tmp_path, capsys, steps, interval):
    """A series re-plans every sixteenth of its steps; an aggregate among series files does not
    make them all aggregates."""
    paths = []
    for i, num_steps in enumerate(steps):
        paths.append(tmp_path / f"w{i}.npy")
        load = _skewed(num_steps, 2, 8, seed=i)
        np.save(paths[-1], load[0] if num_steps == 1 else load)
    j = tmp_path / "sim.json"
    options = "--ranks 4 --slots-per-rank 2 --policies deepseek"
    code, _, err = _simulate(capsys, paths, options, "--json", j)
    assert code == 0, err
    assert json.loads(j.read_text())["setup"]["interval"] == interval


def test_json_is_strict_when_times_overflow(tmp_path, capsys):
    """Loads near the float limit at 1e12 us a token-slot make MoE seconds infinite and the
    throughput inf / inf: written as null, never as the NaN / Infinity JSON does not have."""
    path, out_json = tmp_path / "huge.npy", tmp_path / "sim.json"
    np.save(path, np.array([[[4.0, 1, 1, 1]], [[1, 1, 1, 4]], [[4, 1, 1, 1]]]) * 1e303)
    code, out, err = _simulate(
        capsys,
        [path],
        "--ranks 2 --slots-per-rank 3 --policies none --interval 1 --token-us 1e12",
        "--json",
        out_json,
    )
    assert code == 0, err

    def refuse(token):
        raise AssertionError(f"{token} in the JSON")

    doc = json.loads(out_json.read_text(), parse_constant=refuse)
    summary = doc["policies"]["none"]["summary"]
    assert summary["throughput_vs_none"] is None and summary["par_mean"] > 1.0
    assert [c["throughput_vs_none"] for c in doc["policies"]["none"]["cycles"]] == [None, None]
    assert _table(out)["none"][11] == "-"


def test_expert_bytes_are_whole_numbers_in_the_json(tmp_path, capsys, series):
    out_json = tmp_path / "sim.json"
    code, _, err = _simulate(
        capsys,
        [series],
        "--ranks 4 --slots-per-rank 5 --policies deepseek --interval 4 --token-us 100 "
        "--expert-bytes 17301504",
        "--json",
        out_json,
    )
    assert code == 0, err
    doc = json.loads(out_json.read_text())
    assert doc["setup"]["expert_bytes"] == 17301504
    assert isinstance(doc["setup"]["expert_bytes"], int)
    summary = doc["policies"]["deepseek"]["summary"]
    assert isinstance(summary["bytes_total"], int) and summary["moves_total"] > 0
    assert all(isinstance(c["bytes"], int) for c in doc["policies"]["deepseek"]["cycles"])


def test_simulate_agrees_with_score(tmp_path, capsys, series):
    """Every cycle's numbers equal what ``eplb-rt score`` says of the saved placement and window."""
    out_json, folder = tmp_path / "sim.json", tmp_path / "placements"
    code, _, _ = _simulate(
        capsys,
        [series],
        "--ranks 4 --slots-per-rank 5 --policies deepseek --interval 4",
        "--json",
        out_json,
        "--save-placements",
        folder,
    )
    assert code == 0
    doc = json.loads(out_json.read_text())
    checked = 0
    for name in ("none", "deepseek"):
        previous = None
        for cycle in doc["policies"][name]["cycles"]:
            placement = doc["saved"]["placements"][name][str(cycle["start"])]
            window = doc["saved"]["windows"][str(cycle["start"])]
            assert np.load(window).shape[0] == cycle["stop"] - cycle["start"]
            argv = ["score", "--placement", placement, "--load", window, "--json"]
            if previous is not None:
                argv += ["--previous", previous]
            code, out, err = _run(capsys, *argv)
            assert code == 0, err
            scored = json.loads(out)
            assert scored["par_mean"] == pytest.approx(cycle["par_mean"], rel=1e-12)
            assert scored["par_max"] == pytest.approx(cycle["par_max"], rel=1e-12)
            assert scored["par_per_layer"] == pytest.approx(cycle["par_per_layer"], rel=1e-12)
            if previous is not None:
                assert scored["moves"] == cycle["moves"]
            previous = placement
            checked += 1
    assert checked == 6  # 2 policies x scored windows at steps 4, 8, 12


def test_simulate_passes_policy_options(tmp_path, capsys, series):
    out_json = tmp_path / "sim.json"
    code, _, err = _simulate(
        capsys,
        [series],
        "--ranks 4 --slots-per-rank 5 --policies deepseek --interval 6 --no-baseline "
        "--option deepseek.hierarchical=false",
        "--json",
        out_json,
    )
    assert code == 0, err
    doc = json.loads(out_json.read_text())
    assert doc["setup"]["options"] == {"deepseek": {"hierarchical": False}}
    assert list(doc["policies"]) == ["deepseek"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--policies", "no-such"], "unknown policy 'no-such'"),
        (["--interval", "13"], "need at least interval + 1 steps"),
        (["--interval", "0"], "interval must be >= 1"),
        (["--ranks", "1"], "do not fit in 1 ranks x 5 slots"),
        (["--option", "deepseek=3"], "expected POLICY.KEY=VALUE"),
        (
            ["--policies", "deepseek", "--option", "swift.x=3"],
            "options given for policies not compared",
        ),
        (["--option", "deepseek.nope=1"], "policy 'deepseek' has no option(s) ['nope']"),
        (["--option", "none.x=1"], "'none' is not a policy and takes no options"),
        (
            ["--option", "deepseek.hierarchical=1", "--option", "deepseek.hierarchical=0"],
            "--option deepseek.hierarchical given twice ('1' and '0')",
        ),
    ],
)
def test_simulate_bad_arguments(capsys, series, extra, message):
    ranks = "" if "--ranks" in extra else "--ranks 4"
    code, _, err = _simulate(capsys, [series], f"{ranks} --slots-per-rank 5", *extra)
    assert code == 2
    assert message in err


def test_simulate_refuses_mismatched_workloads(tmp_path, capsys, series):
    other = tmp_path / "other.npy"
    np.save(other, _skewed(4, 3, 8))
    code, _, err = _simulate(capsys, [series, other], "--ranks 4 --slots-per-rank 5")
    assert code == 2
    assert "other has 3 layers x 8 experts but series has 3 x 16" in err


@pytest.mark.parametrize("content", [b"not a load", b"\x93NUMPY\x01\x00garbage"])
def test_simulate_bad_files(tmp_path, capsys, content):
    bad = tmp_path / "bad.npy"
    bad.write_bytes(content)
    code, _, err = _simulate(capsys, [bad], "--ranks 2 --slots-per-rank 4")
    assert code == 2
    assert "bad.npy" in err


def test_simulate_missing_file(tmp_path, capsys):
    code, _, err = _simulate(capsys, [tmp_path / "absent.npy"], "--ranks 2 --slots-per-rank 4")
    assert code == 2
    assert "absent.npy" in err


# ----------------------------------------------------------------------------- convert
def _valid_placement() -> Placement:
    return Placement(np.array([[0, 1, 4, 2, 3, 0], [4, 3, 2, 1, 0, 4]]), 5, 3)


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("vllm-ascend", "sglang"),
        ("sglang", "npy"),
        ("npy", "vllm-ascend"),
        ("vllm-ascend", "npy"),
        ("sglang", "vllm-ascend"),
    ],
)
def test_convert_placements(tmp_path, capsys, src, dst):
    placement = _valid_placement()
    ext = {"npy": ".npy"}
    source = tmp_path / f"in{ext.get(src, '.json')}"
    target = tmp_path / f"out{ext.get(dst, '.json')}"
    formats.write_placement(placement, source, src)
    code, out, err = _run(
        capsys, "convert", "--from", src, "--to", dst, source, target, "--ranks", 3
    )
    assert code == 0, err
    assert "2 layers x 5 experts on 3 ranks x 2 slots" in out
    assert formats.read_placement(target, dst, num_ranks=3) == placement


def test_convert_loads(tmp_path, capsys):
    load = _skewed(4, 2, 6)
    source, middle, back = tmp_path / "a.npy", tmp_path / "count.json", tmp_path / "b.npy"
    np.save(source, load)
    assert _run(capsys, "convert", "--from", "load", "--to", "sglang-count", source, middle)[0] == 0
    doc = json.loads(middle.read_text())
    assert np.array(doc["logical_count"]).shape == (4, 2, 6)
    code, out, _ = _run(
        capsys, "convert", "--from", "sglang-count", "--to", "load", middle, back, "--experts", 6
    )
    assert code == 0
    assert "4 steps x 2 layers x 6 experts" in out
    np.testing.assert_array_equal(np.load(back), load)


@pytest.mark.parametrize(
    "case",
    [
        (
            "sglang",
            "npy",
            {"physical_to_logical_map": [[0, 1, 2]]},
            ["--ranks", "2"],
            "3 slots per layer, not a multiple of 2 ranks",
        ),
        (
            "sglang",
            "npy",
            {"physical_to_logical_map": [[0, 1]]},
            [],
            "does not record the rank count; pass num_ranks (--ranks D on the command line)",
        ),
        (
            "sglang",
            "npy",
            {"physical_to_logical_map": [[0, 1], [1]]},
            ["--ranks", "1"],
            "not rectangular",
        ),
        (
            "sglang",
            "npy",
            {"logical_count": [[1, 2]]},
            ["--ranks", "1"],
            "expected an object (a dict) with key 'physical_to_logical_map'",
        ),
        (
            "sglang",
            "npy",
            {"physical_to_logical_map": [[0, 1, 2, 3]]},
            ["--ranks", "2", "--experts", "3"],
            "expert id 3 not in [0, 3)",
        ),
        (
            "sglang-count",
            "load",
            {"logical_count": [[1, 2, 3]]},
            ["--experts", "4"],
            "load has 3 experts, --experts says 4",
        ),
        ("sglang-count", "load", {"logical_count": [[1, float("nan")]]}, [], "NaN"),
        (
            "sglang",
            "sglang-count",
            {"physical_to_logical_map": [[0]]},
            [],
            "cannot convert a placement (sglang) into a load (sglang-count)",
        ),
    ],
)
def test_convert_errors(tmp_path, capsys, case):
    src, dst, content, extra, message = case
    source = tmp_path / "in.json"
    target = tmp_path / ("out.npy" if dst in ("npy", "load") else "out.json")
    source.write_text(json.dumps(content))
    code, _, err = _run(capsys, "convert", "--from", src, "--to", dst, source, target, *extra)
    assert code == 2
    assert message in err
    assert not target.exists()


def test_convert_not_json(tmp_path, capsys):
    source = tmp_path / "in.json"
    source.write_text("{ nope")
    code, _, err = _run(
        capsys, "convert", "--from", "vllm-ascend", "--to", "npy", source, tmp_path / "out.npy"
    )
    assert code == 2
    assert "in.json: not valid JSON" in err


def test_convert_vllm_ascend_rank_mismatch(tmp_path, capsys):
    source = tmp_path / "in.json"
    formats.write_placement(_valid_placement(), source, "vllm-ascend")
    code, _, err = _run(
        capsys,
        "convert",
        "--from",
        "vllm-ascend",
        "--to",
        "sglang",
        source,
        tmp_path / "out.json",
        "--ranks",
        2,
    )
    assert code == 2
    assert "3 ranks, expected 2" in err


# ----------------------------------------------------------------------------- real trace
ESFT = ESFT_DIR
SHIPPED_POLICIES = ("deepseek", "equilibrium", "flashlb", "random", "swift")


@pytest.mark.slow
def test_simulate_esft_per_request_trace_every_policy(tmp_path, capsys):
    """Every shipped policy on the shipped ESFT per-request trace (127 requests, 26 x 64).

    The policies are named: other test modules register test-only policies in the same process.
    Rows are single requests, so a plan every 32 of them cannot pay for moving DeepSeek-V3-sized
    experts at the default prices; 100 us per token-slot prices a row like a busy step instead.
    """
    out_json, out_png = tmp_path / "esft.json", tmp_path / "esft.png"
    code, out, err = _simulate(
        capsys,
        [ESFT / "counts_intent.npz"],
        "--ranks 8 --slots-per-rank 10 --interval 32 --token-us 100",
        "--policies",
        ",".join(SHIPPED_POLICIES),
        "--json",
        out_json,
        "--plot",
        out_png,
    )
    assert code == 0, err
    doc = json.loads(out_json.read_text())
    assert (doc["setup"]["steps"], doc["setup"]["layers"], doc["setup"]["experts"]) == (127, 26, 64)
    assert set(doc["policies"]) == {"none", *SHIPPED_POLICIES}
    assert set(_table(out)) == set(doc["policies"])
    for name, entry in doc["policies"].items():
        s = entry["summary"]
        assert s["cycles"] == 3, name  # scored windows start at steps 32, 64, 96
        assert s["bound_par_mean"] <= s["par_mean"] <= s["par_max"], name
    none = doc["policies"]["none"]["summary"]["par_mean"]
    assert doc["policies"]["deepseek"]["summary"]["par_mean"] < none
    assert out_png.stat().st_size > 10_000


def test_convert_adds_and_drops_dense_layers_for_sglang(tmp_path, capsys):
    placement = _valid_placement()
    source, mapped, back = tmp_path / "p.json", tmp_path / "sglang.json", tmp_path / "back.json"
    formats.write_placement(placement, source, "vllm-ascend")
    argv = ["--dense-layers", 3]
    assert (
        _run(capsys, "convert", "--from", "vllm-ascend", "--to", "sglang", source, mapped, *argv)[0]
        == 0
    )
    rows = json.loads(mapped.read_text())["physical_to_logical_map"]
    assert rows[:3] == [[0, 1, 2, 3, 4, 0]] * 3  # dense layers: the trivial mapping
    assert rows[3:] == placement.phy2log.tolist()
    assert (
        _run(
            capsys,
            "convert",
            "--from",
            "sglang",
            "--to",
            "vllm-ascend",
            mapped,
            back,
            "--ranks",
            3,
            *argv,
        )[0]
        == 0
    )
    assert formats.read_placement(back, "vllm-ascend") == placement


def test_convert_dense_layers_of_the_deepseek_trace(tmp_path, capsys):
    trace = traces.TRACES_DIR / "sglang_deepseek_v3" / "prefill_in512.json"
    out = tmp_path / "moe.npy"
    code, text, err = _run(
        capsys, "convert", "--from", "sglang-count", "--to", "load", trace, out, "--dense-layers", 3
    )
    assert code == 0, err
    assert "1 steps x 58 layers x 256 experts" in text
    full = formats.read_load(trace, "sglang-count")
    np.testing.assert_array_equal(np.load(out), full[:, 3:])
    code, _, err = _run(
        capsys,
        "convert",
        "--from",
        "sglang-count",
        "--to",
        "load",
        trace,
        tmp_path / "x.npy",
        "--dense-layers",
        4,
    )
    assert code == 2
    assert f"{trace}: layer 3 has load, so it is not dense" in err


def test_convert_dense_layers_needs_one_sglang_side(tmp_path, capsys):
    source = tmp_path / "p.json"
    formats.write_placement(_valid_placement(), source, "vllm-ascend")
    code, _, err = _run(
        capsys,
        "convert",
        "--from",
        "vllm-ascend",
        "--to",
        "npy",
        source,
        tmp_path / "p.npy",
        "--dense-layers",
        1,
    )
    assert code == 2
    assert "--dense-layers applies when exactly one side is an SGLang format" in err


@pytest.mark.parametrize(
    "case",
    [
        ("sglang-count", "load", "law_as.json", "--to load writes a .npy file"),
        ("vllm-ascend", "npy", "p.json", "--to npy writes a .npy file"),
        ("vllm-ascend", "sglang", "init.npy", "--to sglang writes a .json file"),
    ],
)
def test_convert_refuses_an_output_name_that_would_not_read_back(tmp_path, capsys, case):
    """The readers tell a file's format by its suffix: ``.npy`` bytes in a ``.json`` name
    would not read back."""
    src, dst, out, message = case
    source = tmp_path / "in.json"
    source.write_text(json.dumps({"logical_count": [[1, 2]]}))
    code, _, err = _run(capsys, "convert", "--from", src, "--to", dst, source, tmp_path / out)
    assert code == 2 and message in err
    assert not (tmp_path / out).exists()


def test_the_files_asked_for_are_written_when_stdouts_reader_has_left(tmp_path):
    """``eplb-rt simulate ... --json F | head``: the table is printed last, so a reader that
    left (here before the first write, with stdout unbuffered) does not cost the files."""
    import os
    import subprocess
    import sys

    np.save(tmp_path / "load.npy", _skewed(6, 2, 8))
    report = tmp_path / "report.json"
    argv = ["simulate", "--load", str(tmp_path / "load.npy"), "--ranks", "2"]
    argv += ["--slots-per-rank", "5", "--interval", "2", "--policies", "swift"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    child = subprocess.Popen(
        [sys.executable, "-m", "eplb_rt.cli", *argv, "--json", str(report)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=env,
    )  # fmt: skip
    child.stdout.close()
    with child.stderr:
        err = child.stderr.read().decode()
    assert child.wait() == cli.SIGPIPE_STATUS and err == "", err
    assert json.loads(report.read_text())["policies"].keys() >= {"swift"}


def _without_times(value):
    """``value`` (a JSON document's part) without its wall times (``plan_ms...`` keys)."""
    if isinstance(value, dict):
        return {k: _without_times(v) for k, v in value.items() if not k.startswith("plan_ms")}
    if isinstance(value, list):
        return [_without_times(v) for v in value]
    return value


@pytest.fixture
def three_tasks(tmp_path):
    """Three aggregates ``[L, E]`` of one model (:func:`tests.workloads.task_aggregates`), a
    file each."""
    paths = []
    for k, load in enumerate(task_aggregates(3, seed=5)):
        paths.append(tmp_path / f"task{k}.npy")
        np.save(paths[-1], load)
    return paths


def test_plans_on_several_threads_replay_alike(tmp_path, capsys, monkeypatch, three_tasks):
    monkeypatch.setattr(planning, "default_threads", lambda: 3)
    flags = "--ranks 3 --slots-per-rank 5 --policies equilibrium,deepseek"
    docs = []
    for threads in (1, 2, None):  # None: not given
        out_json = tmp_path / f"t{threads}.json"
        given = "" if threads is None else f" --threads {threads}"
        code, out, _ = _simulate(capsys, three_tasks, flags + given, "--json", out_json)
        assert code == 0 and f"plans on {threads or 3} thread" in out
        docs.append(_without_times(json.loads(out_json.read_text())))
        assert docs[-1]["setup"].pop("threads") == (threads or 3)  # what the plan times ran on
    assert docs[0] == docs[1] == docs[2]
    missing = [str(tmp_path / "none.npy")]  # the count is checked before any file is read
    code, _, err = _simulate(capsys, missing, f"{flags} --threads 0")
    assert code == 2 and "--threads must be >= 1, got 0" in err


def test_orders_replay_the_files_in_each_order_and_sum_them_up(tmp_path, capsys, three_tasks):
    flags = "--ranks 3 --slots-per-rank 5 --policies random,equilibrium"
    given = tmp_path / "given.json"
    code, _, _ = _simulate(capsys, three_tasks, flags, "--json", given)
    assert code == 0
    out_json = tmp_path / "orders.json"
    code, out, _ = _simulate(capsys, three_tasks, flags + " --orders 4", "--json", out_json)
    assert code == 0
    doc, alone = json.loads(out_json.read_text()), json.loads(given.read_text())
    # the main table: the order given (its numbers but the wall times)
    assert _without_times(doc["policies"]) == _without_times(alone["policies"])
    orders = doc["orders"]
    assert orders["played"][0] == ["task0", "task1", "task2"]
    assert len({tuple(o) for o in orders["played"]}) == 4
    assert all(sorted(o) == ["task0", "task1", "task2"] for o in orders["played"])
    assert orders["first"] == "random"  # the first listed that re-plans
    rows = {line.split(" | ")[0][2:]: line for line in out.splitlines() if "±" in line}
    for name in ("none", "equilibrium", "random"):
        entry = orders["policies"][name]
        for key, digits in (("throughput_vs_none", 3), ("par_mean", 3), ("moves_per_cycle", 1)):
            each = entry["per_order"][key]
            assert each[0] == alone["policies"][name]["summary"][key]
            assert entry[key] == pytest.approx(np.mean(each))
            assert entry[f"{key}_se"] == pytest.approx(np.std(each, ddof=1) / 2)
            shown = f"{np.mean(each):.{digits}f} ± {np.std(each, ddof=1) / 2:.{digits}f}"
            assert shown in rows[name if name != "none" else "none (no EPLB)"], (name, key)
    # Each order is its own replay: the one played second, given in that order, agrees.
    second = [three_tasks[int(label[-1])] for label in orders["played"][1]]
    again = tmp_path / "second.json"
    assert _simulate(capsys, second, flags, "--json", again)[0] == 0
    replayed = json.loads(again.read_text())["policies"]["equilibrium"]["summary"]
    entry = orders["policies"]["equilibrium"]
    assert entry["per_order"]["throughput_vs_none"][1] == replayed["throughput_vs_none"]
    gaps = np.subtract(
        orders["policies"]["random"]["per_order"]["throughput_vs_none"],
        entry["per_order"]["throughput_vs_none"],
    )  # random's throughput less equilibrium's, order by order
    assert entry["first_throughput_less_this"] == pytest.approx(gaps.mean())
    assert entry["first_throughput_less_this_se"] == pytest.approx(gaps.std(ddof=1) / 2)
    assert "first_throughput_less_this" not in orders["policies"]["random"]
    assert "Over 4 orders of the workloads" in out
    assert "random's throughput less this" in out
    assert (
        rows["equilibrium"]
        .rstrip(" |")
        .endswith(f"{gaps.mean():+.4f} ± {gaps.std(ddof=1) / 2:.4f}")
    )
    assert rows["random"].rstrip(" |").endswith("| -")


def test_orders_pair_with_the_default_policy_where_none_are_named():
    # (Without --policies every registered policy replays, the tests' own among them: the
    # choice is checked on its own.)
    default = EplbConfig().policy
    planned = ["deepseek", default, "flashlb"]
    named = argparse.Namespace(policies=f"deepseek,{default}")
    assert simulate_command._paired_with(argparse.Namespace(policies=None), planned) == default
    assert simulate_command._paired_with(named, planned) == "deepseek"
    assert simulate_command._paired_with(argparse.Namespace(policies=None), [default]) is None


@pytest.mark.parametrize("policies", ["equilibrium", "none"])
def test_orders_of_one_policy_that_replans_pair_nothing(tmp_path, capsys, three_tasks, policies):
    out_json = tmp_path / "orders.json"
    flags = f"--ranks 3 --slots-per-rank 5 --policies {policies} --orders 2"
    code, out, _ = _simulate(capsys, three_tasks, flags, "--json", out_json)
    assert code == 0
    orders = json.loads(out_json.read_text())["orders"]
    assert orders["first"] is None
    assert all("first_throughput_less_this" not in e for e in orders["policies"].values())
    assert "Over 2 orders" in out and "less this" not in out


def test_orders_past_the_permutations_play_each_once(tmp_path, capsys, three_tasks):
    out_json = tmp_path / "orders.json"
    flags = "--ranks 3 --slots-per-rank 5 --policies equilibrium --orders 40"
    assert _simulate(capsys, three_tasks[:2], flags, "--json", out_json)[0] == 0
    played = json.loads(out_json.read_text())["orders"]["played"]
    assert played == [["task0", "task1"], ["task1", "task0"]]


def test_orders_of_a_file_given_twice_are_distinct_sequences(tmp_path, capsys, three_tasks):
    out_json = tmp_path / "orders.json"
    flags = "--ranks 3 --slots-per-rank 5 --policies equilibrium --orders 40"
    files = [three_tasks[0], three_tasks[0], three_tasks[1]]
    assert _simulate(capsys, files, flags, "--json", out_json)[0] == 0
    played = json.loads(out_json.read_text())["orders"]["played"]
    assert played == [
        ["task0#1", "task0#2", "task1"],
        ["task0#1", "task1", "task0#2"],
        ["task1", "task0#1", "task0#2"],
    ]


@pytest.mark.parametrize(
    ("files", "flag", "expected"),
    [
        ([0], "--orders 2", "give two or more different files, got 1 naming 1"),
        ([0, 0], "--orders 2", "give two or more different files, got 2 naming 1"),
        ([0, 1, 2], "--orders 0", "--orders must be >= 1"),
    ],
)
def test_bad_orders_are_refused_before_any_replay(capsys, three_tasks, files, flag, expected):
    flags = f"--ranks 3 --slots-per-rank 5 --policies equilibrium {flag}"
    code, out, err = _simulate(capsys, [three_tasks[i] for i in files], flags)
    assert code != 0 and expected in err and out == ""


def test_a_figure_missing_in_one_order_leaves_its_mean_missing():
    def doc(throughput):
        summary = {"throughput_vs_none": throughput, "par_mean": 1.2, "moves_per_cycle": 3.0}
        return {"policies": {"a": {"summary": summary}, "b": {"summary": dict(summary)}}}

    summed = report.over_orders([doc(1.1), doc(None)], [["x", "y"], ["y", "x"]], "a")
    entry = summed["policies"]["b"]
    assert entry["throughput_vs_none"] is None and entry["throughput_vs_none_se"] is None
    assert entry["par_mean"] == 1.2 and entry["par_mean_se"] == 0.0
    assert entry["first_throughput_less_this"] is None
    assert entry["per_order"]["throughput_vs_none"] == [1.1, None]
    assert "- |" in "\n".join(report._orders_table(summed))
