"""The ops under autograd: like torch's own in-place ops, a write bumps each written tensor's
version (a backward that saved it refuses the overwritten values; under inference mode too),
and a written tensor that requires grad is refused while grad mode is on, with nothing
written."""

from __future__ import annotations

import pytest
import torch

from eplb_rt import ops
from tests.ops.test_update_expert_map import _valid_args as map_args

I32 = torch.int32


def _route_args():
    log2phy = torch.tensor([[0, 1], [2, -1], [3, -1]], dtype=I32)
    logcnt = torch.tensor([2, 1, 1], dtype=I32)
    topk = torch.tensor([[0, 1], [2, 0], [1, 2]])
    return topk, log2phy, logcnt, torch.zeros(2, 4, dtype=I32), torch.tensor([0])


@pytest.mark.parametrize("mode", [torch.enable_grad, torch.inference_mode])
def test_every_write_bumps_the_version_of_what_it_writes(mode):
    """Under ``torch.inference_mode`` too, for tensors made outside it (as torch's in-place ops:
    the ADInplaceOrView kernels bump, not the autograd ones, which that mode skips)."""
    topk, log2phy, logcnt, heat, step = _route_args()
    out = torch.empty_like(topk)
    groups = torch.tensor([1, 2])
    weights = [torch.zeros(4, 3), torch.zeros(4, 2)]
    staged, slots = [torch.ones(1, 3), torch.ones(1, 2)], torch.tensor([1])
    args = map_args()
    before = {name: t._version for name, t in args.items() if isinstance(t, torch.Tensor)}
    with mode():
        ops.route_and_count(topk, log2phy, logcnt, heat, step, out=out)
        routed = (heat._version, out._version)
        ops.count_from_group_list(groups, heat, step, 0)
        ops.update_expert_weights_(weights, staged, slots)
        torch.ops.eplb_rt.update_expert_map_(**args)
    assert routed == (1, 1) and heat._version == 2
    assert topk._version == log2phy._version == logcnt._version == step._version == 0
    assert groups._version == slots._version == 0
    assert [w._version for w in weights] == [1, 1]
    bumped = {name for name, version in before.items() if args[name]._version == version + 1}
    assert bumped == {"log2phy", "logcnt", "replica_share", "expert_map"}
    assert all(args[name]._version == before[name] for name in before.keys() - bumped)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_a_backward_through_overwritten_weights_is_refused(mode):
    """A weight saved for backward, then overwritten by a migration: the gradient would be
    computed from the new expert's values."""
    source = torch.ones(4, 3, requires_grad=True)
    weight = source * 2
    loss = (weight * weight).sum()
    with mode():
        ops.update_expert_weights_([weight], [torch.zeros(1, 3)], torch.tensor([1]))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("kind", ["parameter", "in a graph"])
def test_weights_that_require_grad_are_refused_in_grad_mode_and_kept(kind):
    weight = (
        torch.nn.Parameter(torch.zeros(4, 3))
        if kind == "parameter"
        else torch.zeros(4, 3, requires_grad=True) * 1
    )
    before = weight.detach().clone()
    with pytest.raises(RuntimeError, match=r"weights\[0\] requires grad.*torch.no_grad"):
        ops.update_expert_weights_([weight], [torch.ones(1, 3)], torch.tensor([1]))
    assert torch.equal(weight.detach(), before) and weight._version == 0
    with torch.no_grad():
        ops.update_expert_weights_([weight], [torch.ones(1, 3)], torch.tensor([1]))
    assert torch.equal(weight.detach()[1], torch.ones(3))


def test_inference_mode_skips_the_autograd_kernels():
    """An inference tensor keeps no version: written in inference mode next to tensors made
    outside it (which take the ADInplaceOrView kernel), it is written and not bumped."""
    topk, log2phy, logcnt, heat, step = _route_args()
    with torch.inference_mode():
        heat = torch.zeros(2, 4, dtype=I32)
        ops.route_and_count(topk, log2phy, logcnt, heat, step)
        assert int(heat.sum()) == topk.numel()


def test_tensors_made_in_inference_mode_are_refused_outside_it_with_nothing_written():
    """Torch cannot bump such a tensor's version outside inference mode: the write landed
    first and the refusal came after (a retried route counted its tokens twice)."""
    topk, log2phy, logcnt, _, step = _route_args()
    args = map_args()
    with torch.inference_mode():
        heat = torch.zeros(2, 4, dtype=I32)
        out = torch.full_like(topk, -7)
        weights = [torch.zeros(4, 3)]
        args.update({k: args[k].clone() for k in ("log2phy", "logcnt")})  # two tables written
    plain_heat = torch.zeros(2, 4, dtype=I32)
    calls = {
        "route_and_count: heat": lambda: ops.route_and_count(topk, log2phy, logcnt, heat, step),
        "route_and_count: out": lambda: ops.route_and_count(
            topk, log2phy, logcnt, plain_heat, step, out=out
        ),
        "count_from_group_list: heat": lambda: ops.count_from_group_list(
            torch.tensor([1, 2]), heat, step, 0
        ),
        r"update_expert_weights_: weights\[0\]": lambda: ops.update_expert_weights_(
            weights, [torch.ones(1, 3)], torch.tensor([1])
        ),
        "update_expert_map_: log2phy": lambda: torch.ops.eplb_rt.update_expert_map_(**args),
    }
    before = [t.clone() for t in (heat, out, plain_heat, weights[0], args["log2phy"])]
    for message, call in calls.items():
        with pytest.raises(RuntimeError, match=f"{message} was made under torch.inference_mode"):
            call()
    after = (heat, out, plain_heat, weights[0], args["log2phy"])
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    with torch.inference_mode():  # where they were made, they are written
        ops.route_and_count(topk, log2phy, logcnt, heat, step)
    assert int(heat.sum()) == topk.numel()


def test_every_argument_an_inference_tensor_is_refused_outside_inference_mode_too():
    """No autograd kernel runs then (no argument has autograd keys), but the ADInplaceOrView
    one does, outside inference mode always: refused there before the write, not after it."""
    with torch.inference_mode():
        topk, log2phy, logcnt, heat, step = _route_args()
        groups = torch.tensor([1, 2])
    before = heat.clone()
    with pytest.raises(RuntimeError, match="route_and_count: heat was made under"):
        ops.route_and_count(topk, log2phy, logcnt, heat, step)
    with pytest.raises(RuntimeError, match="count_from_group_list: heat was made under"):
        ops.count_from_group_list(groups, heat, step, 0)
    assert torch.equal(heat, before)
