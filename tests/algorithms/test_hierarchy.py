"""Hierarchical placement for every policy: groups on nodes, each node planned as a flat layer."""

from __future__ import annotations

import numpy as np
import pytest

from eplb_rt import planning
from eplb_rt.algorithms import get_policy, hierarchy, metrics, plan, policy_names
from eplb_rt.algorithms.align import align_placement
from eplb_rt.algorithms.prices import move_prices
from eplb_rt.algorithms.registry import Layers
from eplb_rt.placement import Placement, Topology
from tests.groups import group_nodes

TOPO = Topology(num_ranks=8, num_slots_per_rank=5, num_nodes=4, num_groups=8)  # 32 experts
SHIPPED = ("deepseek", "equilibrium", "flashlb", "random", "swift")


def _load(seed: int, steps: int = 4, layers: int = 3, experts: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).gamma(0.6, 100.0, size=(steps, layers, experts))


def _nodes_of_groups(p: Placement, topo: Topology) -> np.ndarray:
    """``[L, G]``: the one node each group's experts sit on (asserted)."""
    return group_nodes(p.phy2log, topo.num_nodes, p.num_experts // topo.num_groups)


def test_every_shipped_policy_has_the_option():
    assert set(SHIPPED) <= set(policy_names())
    assert all("hierarchical" in get_policy(name).option_names for name in SHIPPED)


@pytest.mark.parametrize("policy", SHIPPED)
def test_every_policy_keeps_each_group_on_one_node(policy):
    load = _load(1)
    p = plan(policy, load, TOPO, options={"hierarchical": True})
    p.validate()
    assert (p.logcnt >= 1).all()
    nodes = _nodes_of_groups(p, TOPO)
    assert (np.stack([(nodes == n).sum(axis=1) for n in range(4)], axis=1) == 2).all()
    again = plan(policy, load, TOPO, p, options={"hierarchical": True})
    assert (_nodes_of_groups(again, TOPO) == nodes).all()


@pytest.mark.parametrize("policy", ["equilibrium", "flashlb", "swift", "random"])
def test_flat_unless_asked(policy):
    load = _load(2)
    flat = plan(policy, load, Topology(8, 5))
    assert plan(policy, load, TOPO) == flat
    assert plan(policy, load, TOPO, options={"hierarchical": True}) != flat


@pytest.mark.parametrize("policy", ["deepseek", "equilibrium"])
def test_each_node_is_the_flat_plan_of_its_experts(policy):
    """The hierarchical plan of a layer is, node by node, the policy's flat plan of that node's
    experts on its ranks, the groups packed by load (two heavy groups on different nodes)."""
    topo = Topology(6, 4, num_nodes=2, num_groups=4)  # 16 experts, 4 groups, 2 nodes
    rng = np.random.default_rng(3)
    load = rng.gamma(0.8, 10.0, size=(5, 1, 16))
    load[:, :, 0:4] *= 20  # group 0 heaviest, then group 2
    load[:, :, 8:12] *= 10
    p = plan(policy, load, topo, options={"hierarchical": True})
    nodes = _nodes_of_groups(p, topo)[0]
    assert nodes[0] != nodes[2]
    for node in range(2):
        ids = np.concatenate([np.arange(4) + 4 * g for g in np.flatnonzero(nodes == node)])
        alone = plan(policy, load[:, :, ids], Topology(3, 4))
        assert (ids[alone.phy2log[0]] == p.phy2log[0, node * 12 : (node + 1) * 12]).all()


def test_groups_are_packed_for_every_episode_but_by_deepseek():
    """Two episodes, each loading its own two groups. LPT on the summed load packs each episode's
    two groups together (peaks 18 and 17.5 of 19 and 18). The policies that plan on episodes
    pack the groups so that each episode's load splits over both nodes; ``deepseek`` keeps
    DeepSeek's packing, and the others see only the summed load, which LPT already balances."""
    topo = Topology(4, 4, num_nodes=2, num_groups=4)  # 16 experts, 4 a group
    groups = np.array([[10.0, 0.5, 0.5, 8.0], [0.0, 8.5, 9.0, 0.5]])  # summed: 10, 9, 9.5, 8.5
    load = np.repeat(groups / 4, 4, axis=1)[:, None, :]  # [2 steps, 1 layer, 16]
    tokens = load.transpose(1, 0, 2)  # [1 layer, 2 episodes, 16]
    batch = Layers(
        load.sum(axis=0) / load.sum(), None, None, np.zeros(1, dtype=np.int64), tokens,
        np.ones(2, dtype=np.int64),
    )  # fmt: skip
    assert (hierarchy.pack_groups(batch, topo, on_episodes=False) == [[0, 1, 1, 0]]).all()
    swapped = hierarchy.pack_groups(batch, topo, on_episodes=True)[0]
    assert swapped[0] == swapped[2] != swapped[1] == swapped[3]
    for policy in SHIPPED:
        nodes = _nodes_of_groups(plan(policy, load, topo, options={"hierarchical": True}), topo)[0]
        if policy in ("equilibrium", "flashlb"):
            assert nodes[0] == nodes[2] != nodes[1] == nodes[3], policy
        else:
            assert nodes[0] == nodes[3] != nodes[1] == nodes[2], policy


def test_shares_are_planned_per_node():
    load = _load(4)
    p = plan("equilibrium", load, TOPO, options={"hierarchical": True, "shares": True})
    p.validate()
    assert not p.is_uniform
    _nodes_of_groups(p, TOPO)
    # Each expert's shares add up to one, within its node.
    for layer in range(p.num_layers):
        total = np.zeros(32)
        np.add.at(total, p.phy2log[layer], p.slot_share[layer])
        assert np.allclose(total, 1.0)


def test_a_replan_keeps_the_packing_and_moves_little():
    load = _load(5)
    first = plan("equilibrium", load, TOPO, options={"hierarchical": True})
    drifted = load * np.random.default_rng(6).uniform(0.9, 1.1, size=load.shape)
    again = plan("equilibrium", drifted, TOPO, first, options={"hierarchical": True})
    assert (_nodes_of_groups(again, TOPO) == _nodes_of_groups(first, TOPO)).all()
    assert again.moved_fraction(first) < 0.25


def test_nodes_are_relabelled_to_the_placement_in_force():
    """The same packing on other node labels moves nothing between nodes."""
    load = _load(7)
    first = plan("deepseek", load, TOPO)
    order = np.arange(TOPO.num_slots).reshape(4, -1)[[2, 0, 3, 1]].ravel()
    shuffled = Placement(first.phy2log[:, order], 32, TOPO.num_ranks)
    again = plan("deepseek", load, TOPO, shuffled)
    assert (_nodes_of_groups(again, TOPO) == _nodes_of_groups(shuffled, TOPO)).all()


def test_a_new_packing_is_taken_only_when_it_pays():
    """The placement in force packs the two heavy groups on one node. Moving groups between
    nodes then pays for free moves (``move_cost`` 0) and not at a high price per slot."""
    topo = Topology(4, 5, num_nodes=2, num_groups=4)  # 16 experts
    load = np.ones((1, 1, 16))
    load[..., :8] = 10.0  # groups 0 and 1 heavy
    bad = np.concatenate([np.arange(8), np.arange(2), np.arange(8, 16), np.arange(8, 10)])
    previous = Placement(bad[None], 16, 4)
    assert (hierarchy.groups_in_force(previous.phy2log, topo, 16) == [[0, 0, 1, 1]]).all()
    free = plan("equilibrium", load, topo, previous, {"hierarchical": True, "move_cost": 0.0})
    kept = plan("equilibrium", load, topo, previous, {"hierarchical": True, "move_cost": 100.0})
    assert sorted(_nodes_of_groups(free, topo)[0, :2]) == [0, 1]
    assert (_nodes_of_groups(kept, topo) == [[0, 0, 1, 1]]).all()
    assert kept.moved_fraction(previous) < free.moved_fraction(previous)


def test_groups_in_force_needs_every_group_on_one_node():
    flat = plan("equilibrium", _load(8), Topology(8, 5))
    held = hierarchy.groups_in_force(flat.phy2log, TOPO, 32)
    grouped = plan("deepseek", _load(8), TOPO)
    assert (hierarchy.groups_in_force(grouped.phy2log, TOPO, 32) >= 0).all()
    assert ((held == -1).all(axis=1) | (held >= 0).all(axis=1)).all()
    assert (held == -1).all(axis=1).any()


def test_alignment_stays_within_nodes():
    """Aligned to a placement in force, a hierarchical plan's ranks move only within their node,
    where a relabelling over all ranks may take a rank to another node."""
    load = _load(9, layers=6)
    previous = plan("deepseek", load, TOPO)
    new = plan("deepseek", load[::-1] ** 1.5, TOPO)
    within = align_placement(previous, new, num_nodes=4)
    assert (_nodes_of_groups(within, TOPO) == _nodes_of_groups(new, TOPO)).all()
    assert within.moves(previous).sum() <= new.moves(previous).sum()


def test_pipeline_keeps_groups_on_nodes():
    load = _load(10)
    previous = plan("deepseek", load, TOPO)
    decision = planning.decide(
        load[::-1] ** 2, previous, TOPO, "equilibrium", {"hierarchical": True},
        cost=planning.CostModel(expert_bytes=1.0), horizon=1e6,
    )  # fmt: skip
    assert decision.layers  # cheap moves: every changed layer pays
    _nodes_of_groups(decision.candidate, TOPO)
    _nodes_of_groups(decision.placement, TOPO)


@pytest.mark.parametrize(
    ("topo", "why"),
    [
        (Topology(8, 5, 4, 5), "32 experts do not split into 5 equal groups"),
        (Topology(8, 5, 1, 8), "all ranks are on one node"),
        (Topology(8, 5, 8, 4), "4 groups do not spread evenly over 8 nodes"),
        (Topology(8, 9, 4, 8), "9 slots per rank > 8 experts per node"),
    ],
)
def test_why_flat(topo, why):
    assert hierarchy.why_flat(32, topo) == why
    assert not hierarchy.applies(32, topo, get_policy("deepseek").options())
    load = _load(11)
    flat = Topology(topo.num_ranks, topo.num_slots_per_rank)
    assert plan("deepseek", load, topo) == plan("deepseek", load, flat)


def test_a_node_missing_one_of_its_experts_is_planned_afresh():
    """A flat placement in force whose node holds only the node's new experts, but not all of
    them, is no placement of that node: the node is planned without it."""
    topo = Topology(4, 3, num_nodes=2, num_groups=2)  # 8 experts, 4 per node, 6 slots per node
    load = np.arange(1.0, 9.0)[None, None, :] ** 2
    fresh = plan("equilibrium", load, topo, options={"hierarchical": True})
    groups = _nodes_of_groups(fresh, topo)[0]
    mine = np.flatnonzero(np.repeat(groups, 4) == 0)  # node 0's experts
    theirs = np.flatnonzero(np.repeat(groups, 4) == 1)
    # Node 0 holds node 0's experts but one of them only on node 1.
    row = np.concatenate([mine[[0, 1, 2, 0, 1, 2]], theirs[[0, 1, 2, 3]], mine[[3]], theirs[[0]]])
    previous = Placement(row[None], 8, 4)
    w = load[0] / load.sum()
    batch = Layers(w, row[None], None, np.zeros(1, dtype=np.int64), w[None], np.ones(1))
    parts = hierarchy.split(batch, topo, hierarchy.expert_ids(groups[None], 8, 2))
    assert parts.known.tolist() == [False, False]
    again = plan("equilibrium", load, topo, previous, options={"hierarchical": True})
    again.validate()
    _nodes_of_groups(again, topo)


def test_a_flat_placement_in_force_becomes_hierarchical_within_the_budget_only():
    """A placement in force whose groups are not each on one node (a flat starting layout):
    the option asks for groups on nodes, so the plan puts them there whatever the moves'
    price, but never past ``max_moved_fraction`` (22 of 40 slots moved at 0 before)."""
    load = np.random.default_rng(0).poisson(100, size=(8, 2, 32)).astype(float)
    topo = Topology(8, 5, 2, 4)
    previous = planning.starting_placement(2, 32, Topology(8, 5))
    assert hierarchy.spread_layers(
        previous.phy2log, 32, topo, get_policy("deepseek").make_options({})
    ).all()
    grouped = {"hierarchical": True}
    for budget in (0.0, 0.25):
        options = {**grouped, "max_moved_fraction": budget}
        new = plan("equilibrium", load, topo, previous=previous, options=options)
        assert new.moves(previous).tolist() == [0, 0]
    dear = plan("equilibrium", load, topo, previous=previous, options={**grouped, "move_cost": 1e6})
    group_nodes(dear.phy2log, 2, 8)  # asserts every group of 8 experts is on one node
    assert dear.moves(previous).sum() > 0


def test_a_hierarchical_re_plan_never_costs_more_than_keeping_each_layer():
    """Each node is planned on its own and priced against its own PAR: a node that is not the
    layer's peak bought moves the layer did not gain from (DeepSeek-V3 at 32x9 on 4 nodes: a
    layer moved 9 slots with its PAR unchanged). Its nodes now go back where that costs less."""
    from benchmarks import traces

    W = np.concatenate(
        [traces.deepseek_v3(w, moe_only=True)[:, :8] for w in traces.DEEPSEEK_V3_WORKLOADS]
    )
    topo, grouped = Topology(32, 9, 4, 8), {"hierarchical": True}
    previous = plan("equilibrium", W[:2], topo, options=grouped)
    new = plan("equilibrium", W[2:], topo, previous=previous, options=grouped)
    load = W[2:].sum(0)
    before, after = metrics.par(previous, load), metrics.par(new, load)
    cost = after + get_policy("equilibrium").options().move_cost * new.moves(previous) / 32
    assert (cost <= before + 1e-12).all()
    assert new.moves(previous).sum() > 0


@pytest.mark.parametrize("slowest", [False, True], ids=["per-slot", "slowest-rank"])
@pytest.mark.parametrize("shares", [False, True], ids=["uniform", "shares"])
@pytest.mark.parametrize("seed", range(12))
def test_no_layer_costs_more_than_keeping_its_grouped_slots(seed, shares, slowest):
    """A new packing was compared only with the groups kept (whose nodes priced their moves
    against their own PAR), and with shares no node was priced against the layer: one slot
    moved for nothing, or both candidates dearer than keeping (8 experts in 4 groups on 2
    nodes of 2 ranks x 3 slots). Priced as the pipeline's gate prices moves (``slowest_rank``:
    the experts the slowest rank receives), the nodes and packings were priced per moved slot,
    which a plan sending several experts to one rank undercuts (9 of these 24 cases)."""
    rng = np.random.default_rng(seed)
    topo, move_cost = Topology(4, 3, num_nodes=2, num_groups=4), 0.2
    options = {"hierarchical": True, "move_cost": move_cost, "shares": shares}
    options["slowest_rank"] = slowest
    previous = plan("equilibrium", rng.gamma(0.6, 10.0, (2, 6, 8)), topo, options=options)
    load = rng.gamma(0.6, 10.0, (1, 6, 8))
    new = plan("equilibrium", load, topo, previous=previous, options=options)
    _nodes_of_groups(new, topo)  # still each group on one node
    before, after = metrics.par(previous, load[0]), metrics.par(new, load[0])
    price = move_prices(
        new.phy2log, previous.phy2log, num_ranks=4, move_cost=move_cost, slowest_rank=slowest
    )
    assert (after + price <= before + 1e-12).all()


def test_a_node_that_pays_is_kept_where_the_whole_plan_does_not():
    """Node 0's swap pays on its own (PAR 1.818 -> 1.273 for 2 slots at 1.0 / 4 each), node 1's
    adds 2 slots for nothing: together they do not pay (1.091 + 1.0). Judged cost alone, every
    plan that does not pay costs as much as the next: node 0 was set back first (node 1's swap
    alone costs no more than both), then node 1, and the layer kept its slots."""
    topo = Topology(4, 2, num_nodes=2, num_groups=2)
    previous = np.array([[0, 1, 2, 3, 4, 5, 6, 7]])
    load = np.array([[5.0, 5, 1, 1, 4, 3, 2, 1]])
    batch = Layers(load, previous, None, np.array([0]), load[None], np.array([1]), True)
    options = get_policy("equilibrium").options(move_cost=1.0, hierarchical=True)
    both = np.array([[0, 2, 1, 3, 4, 6, 5, 7]])
    got = hierarchy._nodes_that_pay(both, batch, topo, options)
    assert got.tolist() == [[0, 2, 1, 3, 4, 5, 6, 7]]


def test_a_grouped_layer_moving_for_nothing_keeps_its_slots():
    topo = Topology(4, 3, num_nodes=2, num_groups=4)
    previous = Placement(np.array([[1, 0, 6, 1, 0, 7, 5, 2, 4, 2, 3, 4]]), 8, 4)
    load = np.array([[15.0, 8, 7, 12, 11, 18, 12, 18]])
    options = {"hierarchical": True, "move_cost": 0.2}
    assert plan("equilibrium", load, topo, previous=previous, options=options) == previous


@pytest.mark.parametrize(("name", "options"), [("flashlb", {"threshold": 1e9}), ("flashlb", {}),
                                               ("swift", {})])  # fmt: skip
def test_an_unpriced_policy_keeps_a_balanced_grouped_placement(name, options):
    """A new packing of the groups moved 12 of 20 slots of a perfectly balanced layer: without a
    price of moves, a new packing is taken only where it lowers the PAR, and each node kept is
    gated by the policy as a flat layer is (flashlb's threshold)."""
    E, topo = 16, Topology(4, 5, 2, 4)
    row = [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 8, 9, 10, 11, 12, 13, 14, 15, 8, 9]  # 2 groups a node
    previous = Placement(np.array([row]), E, 4)
    load = np.full((4, 1, E), 10)
    got = plan(name, load, topo, previous=previous, options={"hierarchical": True, **options})
    assert got.moves(previous).sum() == 0
    # A packing that does lower the PAR is still taken.
    hot = load.copy()
    hot[:, 0, [0, 1, 2, 3]] = 80  # groups 0 and 1 hot, both on node 0
    got = plan(name, hot, topo, previous=previous, options={"hierarchical": True, **options})
    assert np.nanmean(metrics.par(got, hot.sum(0))) < np.nanmean(metrics.par(previous, hot.sum(0)))


@pytest.mark.parametrize("nodes", [2, 4, 0, 1.5])
def test_alignment_refuses_nodes_that_cut_across_ranks(nodes):
    """3 ranks in 2 "nodes" of 3 slots each swapped slots between ranks (rank loads changed)."""
    row = np.array([[4, 0, 3, 1, 2, 4]])
    placement = Placement(row, 5, 3, validate=False)
    with pytest.raises(ValueError, match=r"num_nodes must be an integer >= 1 dividing"):
        align_placement(placement, placement, num_nodes=nodes)
