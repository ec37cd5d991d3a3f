"""``EplbRuntime.route`` captured in a device graph (CUDA graph, NPU graph) and replayed across a
commit.

The commit rewrites the routing tables in place (same storage), so a replay after it routes by
the new placement and counts into the row of the current device step, without recapturing. One
device means one rank, where a policy never moves an expert (a rank's slot order does not change
its load), so the test commits a placement with the layer's slots rotated through the runtime's
own transfer and commit path. The same scenario runs on the CPU with "replay" = calling
``route`` again, which checks the scenario itself where no accelerator is present.
"""

import importlib

import numpy as np
import pytest
import torch

from benchmarks.accel import Accel
from eplb_rt.config import EplbConfig
from eplb_rt.placement import Placement
from eplb_rt.runtime import EplbRuntime
from eplb_rt.runtime.migration import plan_migration
from tests.devices import ON_EVERY_DEVICE

E, N, K, H = 13, 64, 8, 4  # a prime number of experts, a decode-sized batch


def _expected(rt: EplbRuntime, ids: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """The reference routing by the runtime's current tables at its current step."""
    reference = importlib.import_module("tests.reference")
    return reference.route_and_count(
        ids.cpu(),
        rt.log2phy(0).cpu(),
        rt.logcnt(0).cpu(),
        heat,
        rt.step_counter.cpu(),
        replica_share=rt.replica_share(0).cpu(),
    )


@pytest.mark.parametrize("device", ON_EVERY_DEVICE)
def test_route_replays_across_a_commit(device):
    config = EplbConfig(policy="deepseek", interval=0, history=H, episode=1, warm_up=False)
    with EplbRuntime(config, 2, E, device=device) as rt:
        # Slot s of layer 0 holds a weight row equal to the expert it serves.
        weight = torch.tensor(rt.placement.phy2log[0], dtype=torch.float32)[:, None].repeat(1, 3)
        rt.register_weights(0, {"w": weight.to(device)})
        gen = torch.Generator().manual_seed(7)
        ids = torch.randint(E, (N, K), generator=gen)
        ids[torch.rand(N, K, generator=gen) < 0.1] = -1
        ids = ids.to(device)
        out = torch.full_like(ids, -2)
        tables = [t.data_ptr() for t in (rt.log2phy(0), rt.logcnt(0), rt.replica_share(0))]
        replay = Accel(device).capture(lambda: rt.route(0, ids, out=out))
        rt.heat.zero_()
        heat = torch.zeros(H, rt.topology.num_slots, dtype=torch.int32)

        replay()
        before = out.cpu().clone()  # .cpu() of a CPU tensor is the tensor itself
        assert torch.equal(before, _expected(rt, ids, heat))

        # Commit layer 0 rotated by 5 slots through the runtime's transfer and commit path.
        target = Placement(
            np.stack([np.roll(rt.placement.phy2log[0], 5), rt.placement.phy2log[1]]), E, 1
        )
        (migration,) = plan_migration(rt.placement, target)
        transfer = rt.executor.start(migration, 0)
        assert rt.executor.finish(transfer) is None
        rt._set_target(target)
        rt._commit_layer(transfer)
        rt.step()

        replay()
        after = out.cpu()
        assert torch.equal(after, _expected(rt, ids, heat))
        used = ids.cpu() >= 0
        phy2log = torch.from_numpy(target.phy2log[0].astype(np.int64))
        assert torch.equal(phy2log[after[used].long()], ids.cpu()[used].long())  # same experts
        assert not torch.equal(after[used], before[used])  # on their new slots
        assert torch.equal(rt.heat[:, 0].cpu(), heat)  # both replays counted, each in its row
        assert tables == [t.data_ptr() for t in (rt.log2phy(0), rt.logcnt(0), rt.replica_share(0))]
        assert rt.placement == target.select_layers([0, 1])
        # The weights moved with their experts.
        assert torch.equal(rt.executor.weights[0]["w"][:, 0].cpu(), phy2log.float())


def test_compiled_route_keeps_its_path_when_a_layers_shares_change():
    """Engines compile the forward into one graph and run it without its guards: ``route``
    must not bake whether a layer's shares are uniform into it. It did: a commit of uneven
    shares recompiled the model, or with the guards skipped went unseen."""
    config = EplbConfig(policy="deepseek", interval=0, history=H, episode=1, warm_up=False)
    with EplbRuntime(config, 2, E) as rt:
        ids = torch.randint(E, (N, K), generator=torch.Generator().manual_seed(3))
        compiled = torch.compile(lambda x: rt.route(0, x), backend="aot_eager", fullgraph=True)
        heat = torch.zeros(H, rt.topology.num_slots, dtype=torch.int32)
        assert torch.equal(compiled(ids), _expected(rt, ids, heat))
        rt._uniform[0] = False  # what the commit of uneven shares sets (one rank cannot plan any)
        with torch.compiler.set_stance("fail_on_recompile"):
            assert torch.equal(compiled(ids), _expected(rt, ids, heat))
        assert torch.equal(rt.heat[:, 0], heat)
