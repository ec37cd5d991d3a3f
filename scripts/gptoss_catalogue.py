"""Build gpt-oss-20b's category catalogue from the ExpertFingerprinting source's statistics.

    PYTHONPATH=. python scripts/gptoss_catalogue.py SOURCE [--out FILE]  # default: the shipped file

``SOURCE`` is a checkout of ``AmanPriyanshu/GPT-OSS-MoE-ExpertFingerprinting`` (the shipped file
was built from commit ``72b368f``). Under its ``data/<benchmark>/<category>/`` each prompt bucket
has a statistics file (``<flags>.json``; the ``*_examples.json`` next to them hold the prompts
and are not read). A category's load in a phase is the sum over its buckets of what
``benchmarks.traces.gptoss`` reads from one file (:func:`benchmarks.traces.gptoss_phase_load`),
an approximate count of routed tokens ``[24, 32]``. Written (``np.savez_compressed``):

* ``names [C]``: ``<benchmark>/<category>``, sorted;
* ``think [C, 24, 32]``, ``answer [C, 24, 32]`` (float64; zeros where no bucket has an answer);
* ``think_prompts [C]``, ``answer_prompts [C]`` (int64): the prompts summed into each.

Only :data:`BENCHMARKS` (``traces.GPTOSS_BENCHMARKS``) are read: the test splits of MMLU and
MMLU-Pro, GPQA main and SORRY-Bench; the source's dev and validation splits repeat the test
splits' subjects.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.traces import GPTOSS_BENCHMARKS as BENCHMARKS
from benchmarks.traces import GPTOSS_PHASES as PHASES
from benchmarks.traces import gptoss_phase_load


def build(source: Path) -> dict[str, np.ndarray]:
    """The catalogue's arrays from the checkout ``source``; raises ValueError where a
    benchmark's folder is missing or holds no statistics."""
    rows: dict[str, dict] = {}
    for benchmark in BENCHMARKS:
        folder = source / "data" / benchmark
        files = sorted(p for p in folder.glob("*/*.json") if not p.name.endswith("_examples.json"))
        if not files:
            raise ValueError(
                f"{folder.name}: no statistics files under data/{benchmark}/ of {source.name}"
            )
        for path in files:
            doc = json.loads(path.read_text())
            row = rows.setdefault(f"{benchmark}/{path.parent.name}", {})
            for phase in PHASES:
                load = gptoss_phase_load(doc, phase)
                if load is not None:
                    row[phase] = row.get(phase, 0.0) + load
                    row[f"{phase}_prompts"] = row.get(f"{phase}_prompts", 0) + doc["sample_count"]
    names = sorted(rows)
    out = {"names": np.array(names)}
    for phase in PHASES:
        out[phase] = np.stack([rows[n].get(phase, np.zeros((24, 32))) for n in names])
        out[f"{phase}_prompts"] = np.array(
            [rows[n].get(f"{phase}_prompts", 0) for n in names], dtype=np.int64
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a checkout of the source repository")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parents[1]
        / "data/traces/gptoss_20b_fingerprinting/catalogue.npz",
    )
    args = parser.parse_args(argv)
    arrays = build(args.source)
    np.savez_compressed(args.out, **arrays)
    print(f"{args.out.name}: {len(arrays['names'])} categories")


if __name__ == "__main__":
    main()
