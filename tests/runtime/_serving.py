"""What the multi-rank runtime tests share: a small config that plans every few steps, and a
wait that keeps the serving loop from outrunning the balancer thread."""

from __future__ import annotations

import time

from eplb_rt.config import EplbConfig
from eplb_rt.runtime import EplbRuntime


def small_config(**overrides) -> EplbConfig:
    """``rt_test_shift`` (every plan moves experts) every 6 steps, 3 redundant slots."""
    values = dict(
        policy="rt_test_shift",
        interval=6,
        history=6,
        episode=2,
        num_redundant=3,
        deadline=2,
        layers_per_step=2,
        warm_up=False,
        transfer_timeout_s=20.0,
    )
    values.update(overrides)
    return EplbConfig(**values)


def let_plan_finish(runtime: EplbRuntime, timeout: float = 60.0) -> None:
    """Hold the serving loop until this rank's balancer has finished the plan under way.

    On two shared cores under load the serving loop can outrun the balancer thread by more than
    a deadline of a few steps; the plan is then skipped as late, and a test about what a plan
    does would fail on the machine's scheduling. Tests about lateness do not wait.
    """
    job = runtime._pending  # gathered, waiting for its deadline step
    end = time.monotonic() + timeout
    while job is not None and runtime.balancer.result(job.epoch) is None:
        if time.monotonic() > end:
            raise TimeoutError(f"plan {job.epoch} not finished in {timeout} s")
        time.sleep(0.002)
