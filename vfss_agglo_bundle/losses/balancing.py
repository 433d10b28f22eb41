"""Teacher loss balancing: per-teacher scalar losses -> one total loss and per-teacher weights.

Every balancer is an ``nn.Module`` called as ``total, weights = balancer({teacher: loss})``; ``weights``
(a dict of floats, and the tensor property ``balancer.weights``) is meant to be logged every iteration.
Learned balancers have parameters: give ``balancer.parameters()`` to the optimizer (weight decay 0,
learning rate about 10x the student's is a good start) and save ``balancer.state_dict()`` when resuming.

``fixed``
    ``total = sum_i w_i L_i`` with config weights normalised to sum to 1.
``uncertainty``
    Kendall-style (FeatSharp): learned ``u_i``, ``total = sum_i exp(-u_i) L_i + u_i / 2``. At its
    optimum ``exp(-u_i) = 1 / (2 L_i)``: every teacher contributes the same, so a teacher whose loss
    is 100x larger gets ~100x less weight (the reported weights are ``softmax(-u)``).
``mlp`` / ``attention``
    The paper's learned weightings, ``a = softmax(W2 sigma(W1 r + b1) + b2)`` and
    ``a_i = softmax_i(q . k_i / sqrt(d))``. Minimising ``sum_i a_i L_i`` over the balancer parameters
    would put all the weight on the easiest teacher, so they are guarded:

    1. *Scale-free input.* Each loss is divided by its reference value (the mean of its first
       ``ref_steps`` values, kept in a buffer), smoothed with an EMA and divided by the mean over
       teachers: ``r_i = (L_i / L_i^ref) / mean_j (L_j / L_j^ref)`` (GradNorm's relative inverse
       training rate). The student also gets the normalised losses, ``total = sum_i a_i L_i / L_i^ref``,
       so a teacher whose loss is scaled 100x is treated exactly like the unscaled one.
    2. *Objective.* The balancer parameters maximise the weighted relative loss minus a KL penalty
       towards uniform weights: ``J = sum_i p_i r_i - temperature * KL(p || uniform)``, whose optimum
       is ``p_i ~ exp(r_i / temperature)``. Teachers that are learned more slowly (relative to their
       start) get more weight; as the student catches up ``r`` evens out and the weights return to
       uniform (negative feedback, as in GradNorm / DWA / group-DRO), so no teacher is dropped.
       The losses fed to the balancer are detached and the weights applied to the student's losses
       are detached, so ``J`` moves only the balancer and the weighted loss moves only the student.
    3. *Floor.* ``a_i = min_weight + (1 - K min_weight) p_i`` with ``min_weight = 0.5 / K`` by default,
       so every teacher keeps at least half of its uniform share.

Both gradients come from one backward pass: ``total`` carries ``J``'s gradient through the
zero-valued term ``(-J) - (-J).detach()``, so its value is the weighted loss while one optimizer over
student and balancer parameters does the right thing. Under ``torch.distributed`` the losses fed to
the balancer are averaged over ranks, so all ranks compute the same weights and balancer gradients.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
from vfss_agglo_bundle.utils.distributed import mean_over_ranks
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
    """Base class: checks the loss dict, keeps the last weights for logging.

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
        """Weights of the last call, ``[K]`` detached, in ``teacher_names`` order."""
        return self.last_weights.detach().clone()

    def _stack(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``{teacher: scalar}`` -> ``[K]`` in ``teacher_names`` order."""
        if set(losses) != set(self.teacher_names):
            raise KeyError(f"balancer expects losses for {self.teacher_names}, got {sorted(losses)}")
        vec = torch.stack([torch.as_tensor(losses[name]).reshape(()) for name in self.teacher_names])
        return vec.float()

    def _finish(self, total: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        self.last_weights.copy_(weights.detach())
        values = weights.detach().cpu().tolist()
        return total, dict(zip(self.teacher_names, values, strict=True))

    def forward(self, losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """``{teacher: scalar loss}`` -> ``(total scalar, {teacher: weight})``."""
        raise NotImplementedError


class FixedBalancer(LossBalancer):
    """``total = sum_i w_i L_i``; ``weights`` (mapping or sequence, default uniform) are normalised to sum to 1."""

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

    def forward(self, losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        vec = self._stack(losses)
        return self._finish((self.fixed_weights * vec).sum(), self.fixed_weights)


class UncertaintyBalancer(LossBalancer):
    """``total = sum_i exp(-u_i) L_i + u_i / 2`` with learned ``u`` (init ``init_u``); weights ``softmax(-u)``."""

    def __init__(self, teacher_names: Sequence[str], init_u: float = 0.0) -> None:
        super().__init__(teacher_names)
        self.log_var = nn.Parameter(torch.full((self.num_teachers,), float(init_u)))

    def forward(self, losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        vec = self._stack(losses)
        u = self.log_var
        value = (torch.exp(-u).detach() * vec + u.detach() / 2).sum()
        objective = (torch.exp(-u) * mean_over_ranks(vec) + u / 2).sum()
        return self._finish(value + _zero_valued(objective), torch.softmax(-u.detach(), dim=0))


class _GuardedBalancer(LossBalancer):
    """Shared machinery of the learned ``mlp``/``attention`` balancers (see the module docstring).

    Args:
        teacher_names: teachers, in the order of the weight vector.
        temperature: strength of the KL-to-uniform term; lower = more contrast between teachers.
        min_weight: floor on every weight; default ``0.5 / K``; must be at most ``1 / K``.
        ref_steps: number of first calls whose mean loss is each teacher's reference value.
        momentum: EMA momentum of the normalised losses fed to the weighting.
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

    def logits(self, rel: torch.Tensor) -> torch.Tensor:
        """Relative losses ``[K]`` (mean 1) -> unnormalised log-weights ``[K]``."""
        raise NotImplementedError

    @torch.no_grad()
    def _relative(self, observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Update reference and EMA with detached losses ``[K]``; return ``(reference [K], r [K])``."""
        if int(self.steps) < self.ref_steps:
            self.ref_sum += observed
        ref = (self.ref_sum / min(int(self.steps) + 1, self.ref_steps)).clamp_min(1e-12)
        normed = observed / ref
        if int(self.steps) == 0:
            self.ema.copy_(normed)
        else:
            self.ema.mul_(self.momentum).add_(normed, alpha=1.0 - self.momentum)
        self.steps += 1
        return ref, self.ema / self.ema.mean().clamp_min(1e-12)

    def forward(self, losses: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        vec = self._stack(losses)
        ref, rel = self._relative(mean_over_ranks(vec))
        probs = torch.softmax(self.logits(rel), dim=0)
        k = self.num_teachers
        weights = self.min_weight + (1.0 - k * self.min_weight) * probs
        kl_to_uniform = (probs * torch.log(probs.clamp_min(1e-12))).sum() + math.log(k)
        objective = -(probs * rel).sum() + self.temperature * kl_to_uniform
        total = (weights.detach() * vec / ref).sum() + _zero_valued(objective)
        return self._finish(total, weights)


class MLPBalancer(_GuardedBalancer):
    """``a = softmax(W2 GELU(W1 r + b1) + b2)``, ``W1 in R^{h x K}``, ``W2 in R^{K x h}``.

    ``W2`` and ``b2`` start at zero: uniform weights at the start.
    """

    def __init__(self, teacher_names: Sequence[str], hidden_dim: int = 32, **kwargs: float) -> None:
        super().__init__(teacher_names, **kwargs)
        k = self.num_teachers
        self.mlp = nn.Sequential(nn.Linear(k, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, k))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def logits(self, rel: torch.Tensor) -> torch.Tensor:
        return self.mlp(rel)


class AttentionBalancer(_GuardedBalancer):
    """``a_i = softmax_i(q . k_i / sqrt(d))``, learned query ``q`` (zero at the start: uniform weights), keys ``k_i``.

    The weights do not depend on the current losses; ``r`` enters only through the objective.
    """

    def __init__(self, teacher_names: Sequence[str], dim: int = 16, **kwargs: float) -> None:
        super().__init__(teacher_names, **kwargs)
        self.query = nn.Parameter(torch.zeros(dim))
        self.keys = nn.Parameter(torch.randn(self.num_teachers, dim))

    def logits(self, rel: torch.Tensor) -> torch.Tensor:
        return self.keys @ self.query / math.sqrt(self.query.shape[0])


BALANCERS: dict[str, type[LossBalancer]] = {
    "fixed": FixedBalancer,
    "uncertainty": UncertaintyBalancer,
    "mlp": MLPBalancer,
    "attention": AttentionBalancer,
}


def check_balancing(name: str) -> None:
    """Raise a ``ValueError`` listing the balancers when ``name`` is not one of them."""
    check_name(name, BALANCERS, "loss balancer")


def build_balancer(name: str, teacher_names: Sequence[str], **kwargs: object) -> LossBalancer:
    """Balancer by name (``fixed``, ``uncertainty``, ``mlp``, ``attention``); ``kwargs`` go to its constructor."""
    return lookup(name, BALANCERS, "loss balancer")(teacher_names, **kwargs)
