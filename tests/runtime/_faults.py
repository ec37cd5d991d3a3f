"""Fault injection for the runtime tests: the one interface, nothing of it in production classes.

Each function wraps one method of a live runtime (or, for :func:`open_gate`, the planning
pipeline of this process) and returns a callable that undoes it. They work inside spawned ranks
as well, since they patch objects, not imports:

* :func:`slow_planning`: the planning rank's policy takes ``seconds`` longer (plans go late);
* :func:`skew_epoch`: this rank reports plan epochs off by ``offset`` (the ranks disagree);
* :func:`fail_transfers`: this rank's transfers of ``layers`` report a failure;
* :func:`fail_commits`: this rank's commits of ``layers`` raise, after the ranks agreed on them;
* :func:`open_gate`: every changed layer of the policy's plan is committed, whatever it is worth
  (for tests of the migration mechanics with a policy that does not balance).

A policy that raises is the registered ``rt_test_raise`` (see ``_policies``).
"""

from __future__ import annotations

import dataclasses
import time

from eplb_rt import planning


def _wrap(obj, name: str, make):
    original = getattr(obj, name)
    setattr(obj, name, make(original))
    return lambda: setattr(obj, name, original)


def slow_planning(runtime, seconds: float):
    def make(plan):
        def slow(job, heat):
            time.sleep(seconds)
            return plan(job, heat)

        return slow

    return _wrap(runtime.balancer, "_plan", make)


def skew_epoch(runtime, offset: int):
    def make(run):
        def skewed(job):
            result = run(job)
            return dataclasses.replace(result, epoch=result.epoch + offset)

        return skewed

    return _wrap(runtime.balancer, "_run", make)


def fail_transfers(runtime, layers):
    def make(finish):
        def failing(transfer):
            error = finish(transfer)
            if error is None and transfer.migration.layer in layers:
                return f"layer {transfer.migration.layer}: injected transfer failure"
            return error

        return failing

    return _wrap(runtime.executor, "finish", make)


def fail_commits(runtime, layers):
    def make(commit):
        def failing(transfer, slots):
            if transfer.migration.layer in layers:
                raise RuntimeError(f"layer {transfer.migration.layer}: injected commit failure")
            return commit(transfer, slots)

        return failing

    return _wrap(runtime.executor, "commit", make)


def open_gate():
    def make(decide):
        def every_change(*args, **kwargs):
            d = decide(*args, **kwargs)
            layers = tuple(int(x) for x in d.candidate.changed_layers(args[1]))
            placement = args[1].replace_layers(layers, d.candidate) if layers else args[1]
            slots = int(placement.moves(args[1]).sum())
            return dataclasses.replace(d, placement=placement, layers=layers, slots=slots)

        return every_change

    return _wrap(planning, "decide", make)
