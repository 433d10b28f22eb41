"""Teacher loss balancing: per-sample, per-teacher losses -> one total loss and per-sample teacher weights.

Every balancer is an ``nn.Module`` called as ``total, weights = balancer({teacher: loss [B]}, features)`` with
the per-sample losses of each teacher and the (detached) student summary ``features [B, D]`` of each sample;
``weights`` is ``[B, K]`` in ``teacher_names`` order. The trainer logs its mean and its spread over the samples.
Learned balancers have parameters: give ``balancer.parameters()`` to the optimizer (weight decay 0, learning
rate about 10x the student's) and save ``balancer.state_dict()`` when resuming.

``fixed``
    ``total = mean_b sum_i w_i L_bi`` with config weights normalised to sum to 1.
``uncertainty``
    Kendall-style (FeatSharp): learned ``u_i``, ``total = sum_i exp(-u_i) L_i + u_i / 2`` on the batch-mean
    losses. At its optimum ``exp(-u_i) = 1 / (2 L_i)``: every teacher contributes the same, so a teacher whose
    loss is 100x larger gets ~100x less weight (the reported weights are ``softmax(-u)``).
``mlp`` (one weight vector per batch)
    ``p = softmax(W2 GELU(W1 r + b1) + b2)`` from the vector ``r`` of the teachers' relative batch losses.
``attention`` (one weight vector per sample)
    ``p_b = softmax_i(q_b . k_i / sqrt(d))`` with one learned key ``k_i`` per teacher and a query
    ``q_b = W_q LayerNorm(f_b)`` computed from the detached student summary ``f_b`` of sample ``b``, so that
    frames on which the student represents different content can weigh the teachers differently.

What the two learned balancers optimise, and where that departs from the paper (Zeng et al. give
``a = softmax(MLP(L))`` and ``a_i = softmax_i(q . k_i / sqrt(d))`` with a learned query, and minimise
``sum_i a_i L_i``, which over the balancer parameters puts all the weight on the easiest teacher):

1. *Scale-free losses.* Each teacher's loss is divided by its reference value ``L_i^ref``, the mean of its first
   ``ref_steps`` batch losses (kept in a buffer), and by the mean over teachers:
   ``r_i = (L_i / L_i^ref) / mean_j (L_j / L_j^ref)`` (GradNorm's relative inverse training rate); for ``mlp``
   the batch values are smoothed with an EMA, for ``attention`` ``r_bi`` is computed per sample. The student
   also gets the normalised losses, ``total = mean_b sum_i a_bi L_bi / L_i^ref``, so a teacher whose loss is
   scaled 100x is treated exactly like the unscaled one.
2. *Objective.* The balancer parameters maximise the weighted relative loss minus a KL penalty towards uniform
   weights, ``J = mean_b [sum_i p_bi r_bi - temperature * KL(p_b || uniform)]``, whose optimum is
   ``p_bi ~ exp(r_bi / temperature)``: teachers (and, for attention, teachers on a frame) that are learned more
   slowly, relative to their start, get more weight; as the student catches up ``r`` evens out and the weights
   return to uniform (negative feedback, as in GradNorm / DWA / group-DRO), so no teacher is dropped. The MLP
   sees ``r`` itself, so it learns to approximate that closed form batch by batch (a smoothed DWA). The attention
   query sees only the student's features, not the losses, so it can reach the per-sample optimum only as far as
   the features predict which teacher a frame is hard for: its weights are a learned function of the image
   content, the paper's idea of attention over teachers made input-dependent (the paper's query is one vector).
3. *Floor.* ``a_bi = min_weight + (1 - K min_weight) p_bi`` with ``min_weight = 0.5 / K`` by default, so every
   teacher keeps at least half of its uniform share.

The losses fed to the balancer and the weights applied to the student's losses are detached, so ``J`` moves
only the balancer and the weighted loss moves only the student; both gradients come from one backward pass
through the zero-valued term ``(-J) - (-J).detach()``. Under ``torch.distributed`` the reference losses and the
MLP's input are averaged over ranks, so all ranks agree (the trainer averages the balancer's gradients).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from vfss_agglo_bundle.utils.distributed import mean_over_ranks
from vfss_agglo_bundle.utils.random import seeded
from vfss_agglo_bundle.utils.registry import check_name, lookup

__all__ = [
    "BALANCERS",
    "AttentionBalancer",
    "FixedBalancer",
    "LossBalancer",
    "MLPBalancer",
    "UncertaintyBalancer",
    "build_balancer",
    "check_balancing",
]


def _zero_valued(objective: torch.Tensor) -> torch.Tensor:
    """A scalar equal to 0 whose gradient is the gradient of ``objective``."""
    return objective - objective.detach()


class LossBalancer(nn.Module):
    """Base class: checks the losses, keeps the last batch-mean weights for logging.

    An empty teacher list (training from scratch, where stage 1 is skipped) gives a balancer with no weights.
    """

    def __init__(self, teacher_names: Sequence[str]) -> None:
        super().__init__()
        self.teacher_names = list(teacher_names)
        if len(set(self.teacher_names)) != len(self.teacher_names):
            raise ValueError(f"a balancer needs distinct teacher names, got {self.teacher_names}")
        k = len(self.teacher_names)
        self.register_buffer("last_weights", torch.full((k,), 1.0 / max(k, 1)), persistent=False)

    @property
    def num_teachers(self) -> int:
        return len(self.teacher_names)

    @property
    def weights(self) -> torch.Tensor:
        """Batch-mean weights of the last call, ``[K]`` detached, in ``teacher_names`` order."""
        return self.last_weights.detach().clone()

    def _stack(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``{teacher: [B] or scalar}`` -> ``[B, K]`` in ``teacher_names`` order (a scalar is a batch of one)."""
        if set(losses) != set(self.teacher_names):
            raise KeyError(f"balancer expects losses for {self.teacher_names}, got {sorted(losses)}")
        return torch.stack([torch.as_tensor(losses[n]).reshape(-1) for n in self.teacher_names], dim=1).float()

    def _finish(self, total: torch.Tensor, weights: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keep the batch-mean of ``weights`` (``[K]`` or ``[B, K]``) and return them as ``[B, K]``."""
        weights = weights.detach().expand(batch, -1) if weights.ndim == 1 else weights.detach()
        self.last_weights.copy_(weights.mean(0))
        return total, weights

    def forward(
        self, losses: Mapping[str, torch.Tensor], features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``{teacher: per-sample losses [B]}``, student summaries ``[B, D]`` -> ``(total, weights [B, K])``."""
        raise NotImplementedError


class FixedBalancer(LossBalancer):
    """``total = mean_b sum_i w_i L_bi``; ``weights`` (mapping or sequence, default uniform) normalised to sum 1."""

    def __init__(
        self, teacher_names: Sequence[str], weights: Mapping[str, float] | Sequence[float] | None = None
    ) -> None:
        super().__init__(teacher_names)
        if weights is None:
            values = [1.0] * self.num_teachers
        elif isinstance(weights, Mapping):
            if set(weights) != set(self.teacher_names):
                raise ValueError(
                    f"fixed balancer weights must name exactly {self.teacher_names}, got {sorted(weights)}"
                )
            values = [float(weights[name]) for name in self.teacher_names]
        else:
            values = [float(w) for w in weights]
            if len(values) != self.num_teachers:
                raise ValueError(f"fixed balancer needs {self.num_teachers} weights, got {len(values)}")
        if values and (min(values) < 0 or sum(values) <= 0):
            raise ValueError(f"fixed balancer weights must be >= 0 with a positive sum, got {values}")
        self.register_buffer("fixed_weights", torch.tensor(values) / max(sum(values), 1e-12))

    def forward(
        self, losses: Mapping[str, torch.Tensor], features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        vec = self._stack(losses)
        return self._finish((vec * self.fixed_weights).sum(1).mean(), self.fixed_weights, len(vec))


class UncertaintyBalancer(LossBalancer):
    """``total = sum_i exp(-u_i) L_i + u_i / 2`` on batch means, learned ``u`` (init ``init_u``); weights
    ``softmax(-u)``."""

    def __init__(self, teacher_names: Sequence[str], init_u: float = 0.0) -> None:
        super().__init__(teacher_names)
        self.log_var = nn.Parameter(torch.full((self.num_teachers,), float(init_u)))

    def forward(
        self, losses: Mapping[str, torch.Tensor], features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        vec = self._stack(losses)
        batch = vec.mean(0)
        u = self.log_var
        value = (torch.exp(-u).detach() * batch + u.detach() / 2).sum()
        objective = (torch.exp(-u) * mean_over_ranks(batch) + u / 2).sum()
        return self._finish(value + _zero_valued(objective), torch.softmax(-u.detach(), dim=0), len(vec))


class _GuardedBalancer(LossBalancer):
    """Shared machinery of the learned ``mlp``/``attention`` balancers (see the module docstring).

    Args:
        teacher_names: teachers, in the order of the weight vector.
        temperature: strength of the KL-to-uniform term; lower = more contrast between teachers.
        min_weight: floor on every weight; default ``0.5 / K``; must be at most ``1 / K``.
        ref_steps: number of first calls whose mean batch loss is each teacher's reference value.
        momentum: EMA momentum of the normalised batch losses (``mlp``).
    """

    def __init__(
        self,
        teacher_names: Sequence[str],
        temperature: float = 0.5,
        min_weight: float | None = None,
        ref_steps: int = 10,
        momentum: float = 0.9,
    ) -> None:
        super().__init__(teacher_names)
        k = self.num_teachers
        self.temperature = float(temperature)
        self.min_weight = 0.5 / max(k, 1) if min_weight is None else float(min_weight)
        self.ref_steps = int(ref_steps)
        self.momentum = float(momentum)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= self.min_weight <= 1.0 / max(k, 1):
            raise ValueError(f"min_weight must be in [0, 1/K] = [0, {1.0 / max(k, 1):.4f}], got {self.min_weight}")
        if self.ref_steps < 1 or not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"need ref_steps >= 1 and 0 <= momentum < 1, got {ref_steps}, {momentum}")
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("ref_sum", torch.zeros(k))
        self.register_buffer("ema", torch.ones(k))

    @torch.no_grad()
    def _reference(self, batch: torch.Tensor) -> torch.Tensor:
        """Update the reference with the detached batch-mean losses ``[K]``; returns it ``[K]``."""
        if int(self.steps) < self.ref_steps:
            self.ref_sum += batch
        self.steps += 1
        return (self.ref_sum / min(int(self.steps), self.ref_steps)).clamp_min(1e-12)

    def _combine(self, vec: torch.Tensor, ref: torch.Tensor, probs: torch.Tensor, rel: torch.Tensor) -> torch.Tensor:
        """Student loss with the floored weights, plus the balancer objective's gradient (``probs``, ``rel``
        ``[B, K]`` or ``[K]``)."""
        k = self.num_teachers
        weights = self.min_weight + (1.0 - k * self.min_weight) * probs
        kl_to_uniform = (probs * torch.log(probs.clamp_min(1e-12))).sum(-1) + math.log(k)
        objective = ((probs * rel).sum(-1) - self.temperature * kl_to_uniform).mean()
        student = (weights.detach() * vec / ref).sum(1).mean()
        return student + _zero_valued(-objective), weights


class MLPBalancer(_GuardedBalancer):
    """Per-batch weights ``p = softmax(W2 GELU(W1 r + b1) + b2)``, ``W1 in R^{h x K}``, ``W2 in R^{K x h}``.

    ``W2`` and ``b2`` start at zero: uniform weights at the start.
    """

    def __init__(self, teacher_names: Sequence[str], hidden_dim: int = 32, **kwargs: float) -> None:
        super().__init__(teacher_names, **kwargs)
        k = self.num_teachers
        self.mlp = nn.Sequential(nn.Linear(k, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, k))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(
        self, losses: Mapping[str, torch.Tensor], features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        vec = self._stack(losses)
        batch = mean_over_ranks(vec.mean(0))
        ref = self._reference(batch)
        with torch.no_grad():
            normed = batch / ref
            if int(self.steps) == 1:
                self.ema.copy_(normed)
            else:
                self.ema.mul_(self.momentum).add_(normed, alpha=1.0 - self.momentum)
            rel = self.ema / self.ema.mean().clamp_min(1e-12)
        probs = torch.softmax(self.mlp(rel), dim=-1)
        total, weights = self._combine(vec, ref, probs, rel)
        return self._finish(total, weights, len(vec))


class AttentionBalancer(_GuardedBalancer):
    """Per-sample weights ``p_b = softmax_i(q_b . k_i / sqrt(d))``, ``q_b = W_q LayerNorm(f_b)`` from the
    detached student summary ``f_b [D]``; one learned key ``k_i`` per teacher.

    ``W_q`` starts at zero: uniform weights at the start.

    Args:
        teacher_names: teachers.
        feature_dim: D, the length of the student summary.
        dim: d, the query and key size.
        kwargs: the guards (:class:`_GuardedBalancer`).
    """

    def __init__(self, teacher_names: Sequence[str], feature_dim: int, dim: int = 16, **kwargs: float) -> None:
        super().__init__(teacher_names, **kwargs)
        self.feature_dim = int(feature_dim)
        self.query = nn.Linear(self.feature_dim, dim, bias=False)
        nn.init.zeros_(self.query.weight)
        self.keys = nn.Parameter(torch.randn(self.num_teachers, dim))

    def forward(
        self, losses: Mapping[str, torch.Tensor], features: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        vec = self._stack(losses)
        if features is None or features.shape != (len(vec), self.feature_dim):
            shape = None if features is None else tuple(features.shape)
            raise ValueError(
                f"the attention balancer needs the student summary of every sample, [{len(vec)}, "
                f"{self.feature_dim}], got {shape}."
            )
        ref = self._reference(mean_over_ranks(vec.mean(0)))
        with torch.no_grad():
            normed = vec / ref
            rel = normed / normed.mean(1, keepdim=True).clamp_min(1e-12)
        queries = self.query(F.layer_norm(features.detach().float(), (self.feature_dim,)))
        probs = torch.softmax(queries @ self.keys.T / math.sqrt(self.keys.shape[1]), dim=-1)  # [B, K]
        total, weights = self._combine(vec, ref, probs, rel)
        return self._finish(total, weights, len(vec))


BALANCERS: dict[str, type[LossBalancer]] = {
    "fixed": FixedBalancer,
    "uncertainty": UncertaintyBalancer,
    "mlp": MLPBalancer,
    "attention": AttentionBalancer,
}


def check_balancing(name: str) -> None:
    """Raise a ``ValueError`` listing the balancers when ``name`` is not one of them."""
    check_name(name, BALANCERS, "loss balancer")


def build_balancer(
    name: str,
    teacher_names: Sequence[str],
    feature_dim: int | None = None,
    init_seed: int | None = None,
    **kwargs: object,
) -> LossBalancer:
    """Balancer by name (``fixed``, ``uncertainty``, ``mlp``, ``attention``).

    Args:
        name: the balancer.
        teacher_names: teachers, in weight order.
        feature_dim: length of the student summary (used by ``attention``).
        init_seed: the balancer's parameters are drawn from the stream ``(init_seed, "balancer")``, whatever ran
            before (``None``: torch's current generator).
        kwargs: the balancer's own arguments.
    """
    cls = lookup(name, BALANCERS, "loss balancer")
    if "feature_dim" in inspect.signature(cls).parameters:
        if feature_dim is None:
            raise ValueError(f"the {name} balancer needs feature_dim (the student summary length).")
        kwargs["feature_dim"] = feature_dim
    with seeded(init_seed, "balancer"):
        return cls(teacher_names, **kwargs)
