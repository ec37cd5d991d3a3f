"""A reference expert-parallel MoE model in plain torch over ``torch.distributed``.

Each of ``L`` layers: router (linear + top-k + softmax over the chosen logits), dispatch of
every (token, choice) pair to the rank holding the chosen replica (``all_to_all_single``),
expert MLPs ``silu(x @ w1) @ w2`` per local slot, the reverse ``all_to_all_single``, and a
gate-weighted combine in a fixed order of the K choices, then a residual add.

With an :class:`~eplb_rt.runtime.EplbRuntime` the model uses its hooks: ``route`` (or its tables
and ``record`` when the heat comes from the receiver's group list), ``register_weights`` for the
slot tensors. Without one it is the same model on the static contiguous layout (expert ``e`` in
slot ``e``, ``E / D`` experts per rank), the baseline the runtime must match.

Expert weights are a pure function of ``(seed, layer, expert)``, so a model built for any
placement holds exactly the weights a migration must produce.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from eplb_rt.scalars import check_count


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """Shapes of the reference model.

    Attributes:
        num_layers: MoE layers ``L``.
        num_experts: logical experts ``E`` per layer.
        top_k: experts per token ``K``.
        hidden: model width; ``ffn``: expert MLP width.
        seed: weights are drawn from it (identical on every rank).
        dtype: parameter and activation dtype.
        exact: compute every token's expert MLP on its own (a batch of one row each), so its
            result does not depend on which other tokens share the expert's batch: outputs are
            then bitwise identical under any placement. Slower; for tests.
    """

    num_layers: int = 8
    num_experts: int = 64
    top_k: int = 6
    hidden: int = 64
    ffn: int = 128
    seed: int = 0
    dtype: torch.dtype = torch.float32
    exact: bool = False

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_experts", "top_k", "hidden", "ffn"):
            object.__setattr__(self, name, check_count(f"MoEConfig.{name}", getattr(self, name)))
        if self.top_k > self.num_experts:
            raise ValueError(
                f"MoEConfig.top_k ({self.top_k}) exceeds num_experts ({self.num_experts})"
            )


def expert_weights(cfg: MoEConfig, layer: int, experts: np.ndarray) -> dict[str, torch.Tensor]:
    """``{"w1": [n, hidden, ffn], "w2": [n, ffn, hidden]}`` of the given logical experts."""
    w1 = torch.empty((len(experts), cfg.hidden, cfg.ffn), dtype=cfg.dtype)
    w2 = torch.empty((len(experts), cfg.ffn, cfg.hidden), dtype=cfg.dtype)
    for i, expert in enumerate(np.asarray(experts).tolist()):
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + layer * 4099 + expert + 1)
        w1[i] = torch.randn((cfg.hidden, cfg.ffn), generator=gen, dtype=cfg.dtype) / cfg.hidden**0.5
        w2[i] = torch.randn((cfg.ffn, cfg.hidden), generator=gen, dtype=cfg.dtype) / cfg.ffn**0.5
    return {"w1": w1, "w2": w2}


def router_weights(cfg: MoEConfig) -> torch.Tensor:
    """``[L, hidden, E]`` router matrices (logits have unit scale)."""
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + 17)
    return (
        torch.randn((cfg.num_layers, cfg.hidden, cfg.num_experts), generator=gen, dtype=cfg.dtype)
        / cfg.hidden**0.5
    )


class ExpertParallelMoE:
    """The model on this rank.

    Args:
        cfg: shapes and seed.
        runtime: an ``EplbRuntime`` built for ``cfg.num_layers`` x ``cfg.num_experts``; ``None``
            runs the static layout (``E`` must be a multiple of the number of ranks).
        group: expert-parallel group for the dispatch (``None``: the default group when
            ``torch.distributed`` is initialised, else one rank).
        device: where weights and activations live.
    """

    def __init__(
        self, cfg: MoEConfig, *, runtime=None, group=None, device: torch.device | str = "cpu"
    ) -> None:
        self.cfg = cfg
        self.runtime = runtime
        self.device = torch.device(device)
        self.group = group
        distributed = dist.is_available() and dist.is_initialized()
        if runtime is not None:
            if (runtime.num_layers, runtime.num_experts) != (cfg.num_layers, cfg.num_experts):
                raise ValueError(
                    f"runtime is for {runtime.num_layers} layers x "
                    f"{runtime.num_experts} experts, model has {cfg.num_layers} x "
                    f"{cfg.num_experts}"
                )
            self.rank, self.num_ranks = runtime.rank, runtime.num_ranks
            self.slots = runtime.num_slots_per_rank
            phy2log = runtime.placement.by_rank()[:, self.rank]
        else:
            self.rank = dist.get_rank(group) if distributed else 0
            self.num_ranks = dist.get_world_size(group) if distributed else 1
            if cfg.num_experts % self.num_ranks:
                raise ValueError(
                    f"the static layout needs num_experts ({cfg.num_experts}) to be "
                    f"a multiple of the ranks ({self.num_ranks})"
                )
            self.slots = cfg.num_experts // self.num_ranks
            local = np.arange(self.rank * self.slots, (self.rank + 1) * self.slots)
            phy2log = np.tile(local, (cfg.num_layers, 1))
        self.router = router_weights(cfg).to(self.device)
        self.weights = []
        for layer in range(cfg.num_layers):
            tensors = {
                k: v.to(self.device) for k, v in expert_weights(cfg, layer, phy2log[layer]).items()
            }
            self.weights.append(tensors)
            if runtime is not None:
                runtime.register_weights(layer, tensors)
        self.use_group_list = runtime is not None and runtime.config.heat_source == "group_list"
        self.rank_tokens = torch.zeros((cfg.num_layers, self.num_ranks), dtype=torch.int64)
        """``[L, D]`` pairs this rank sent to each rank in the last forward (for PAR reports)."""
        self.expert_tokens = torch.zeros((cfg.num_layers, cfg.num_experts), dtype=torch.int64)
        """``[L, E]`` pairs this rank routed to each logical expert in the last forward."""

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """``x [N, hidden]`` -> ``[N, hidden]``; ``bias [L, E]`` is added to the router logits."""
        for layer in range(self.cfg.num_layers):
            logits = x @ self.router[layer]
            if bias is not None:
                logits = logits + bias[layer]
            top_logits, topk_ids = torch.topk(logits, self.cfg.top_k, dim=-1)
            gate = torch.softmax(top_logits, dim=-1)
            self.expert_tokens[layer] = torch.bincount(
                topk_ids.reshape(-1), minlength=self.cfg.num_experts
            ).cpu()
            phy = self._physical(layer, topk_ids)
            x = x + self._experts(layer, x, phy, gate)
        return x

    __call__ = forward

    def _physical(self, layer: int, topk_ids: torch.Tensor) -> torch.Tensor:
        """Physical slot of every (token, choice)."""
        if self.runtime is None:
            return topk_ids  # static layout: expert e sits in slot e
        # With receiver-side heat, route() only routes; record() counts at dispatch.
        return self.runtime.route(layer, topk_ids)

    def _experts(
        self, layer: int, x: torch.Tensor, phy: torch.Tensor, gate: torch.Tensor
    ) -> torch.Tensor:
        N, K = phy.shape
        H, S, D = self.cfg.hidden, self.slots, self.num_ranks
        flat = phy.reshape(-1).long()
        dest = flat // S
        order = torch.argsort(dest, stable=True)
        send_counts = torch.bincount(dest, minlength=D)
        self.rank_tokens[layer] = send_counts.cpu()
        rows = x[order // K]
        slots = flat[order] % S
        if D > 1:
            recv_counts = torch.empty_like(send_counts)
            dist.all_to_all_single(recv_counts, send_counts, group=self.group)
            send_split, recv_split = send_counts.tolist(), recv_counts.tolist()
            recv_rows = rows.new_empty((sum(recv_split), H))
            recv_slots = slots.new_empty(sum(recv_split))
            dist.all_to_all_single(recv_rows, rows, recv_split, send_split, group=self.group)
            dist.all_to_all_single(recv_slots, slots, recv_split, send_split, group=self.group)
        else:
            recv_rows, recv_slots = rows, slots
        out = self._local_experts(layer, recv_rows, recv_slots)
        if D > 1:
            back = rows.new_empty((N * K, H))
            dist.all_to_all_single(back, out, send_split, recv_split, group=self.group)
        else:
            back = out
        pairs = torch.empty_like(back)
        pairs[order] = back
        return (gate.unsqueeze(-1) * pairs.view(N, K, H)).sum(dim=1)

    def _local_experts(self, layer: int, rows: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Expert MLP of each received row's slot."""
        order = torch.argsort(slots, stable=True)
        group_list = torch.bincount(slots, minlength=self.slots)
        if self.use_group_list:
            self.runtime.record(layer, group_list)
        w = self.weights[layer]
        out = torch.empty_like(rows)
        start = 0
        for slot, count in enumerate(group_list.tolist()):
            if count:
                idx = order[start : start + count]
                out[idx] = _mlp(rows[idx], w["w1"][slot], w["w2"][slot], self.cfg.exact)
                start += count
        return out


def _mlp(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, exact: bool) -> torch.Tensor:
    """``silu(x @ w1) @ w2`` for ``x [n, hidden]``. ``exact`` runs one row at a time (always the
    same kernel call on the same shape), since a GEMM's blocking, and so its rounding, may depend
    on ``n``."""
    if not exact:
        return F.silu(x @ w1) @ w2
    return torch.cat([F.silu(row @ w1) @ w2 for row in x.split(1)])
