"""Standardising each teacher's targets before their losses are mixed: PHI-S (RADIO v2.5 / FeatSharp)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable

import torch
import torch.nn as nn
from vfss_agglo_bundle.utils.io import save_torch
from vfss_agglo_bundle.utils.state_dict import read_state_dict

__all__ = ["PHIStandardizer", "hadamard_matrix"]

logger = logging.getLogger(__name__)


def _paley_hadamard(q: int) -> torch.Tensor:
    """Paley construction I: a Hadamard matrix of order q + 1 for a prime q = 3 (mod 4)."""
    squares = {(i * i) % q for i in range(1, q)}
    chi = torch.tensor([0] + [1 if i in squares else -1 for i in range(1, q)], dtype=torch.float64)
    idx = torch.arange(q)
    jacobsthal = chi[(idx[None, :] - idx[:, None]) % q]
    skew = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    skew[0, 1:] = 1.0
    skew[1:, 0] = -1.0
    skew[1:, 1:] = jacobsthal
    return skew + torch.eye(q + 1, dtype=torch.float64)


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def hadamard_matrix(n: int) -> torch.Tensor | None:
    """Normalised (orthogonal) Hadamard matrix ``[n, n]`` in float64, or None when this construction has none.

    Built as ``H_m (x) H_2 (x) ... (x) H_2`` with ``m = n / 2^k`` either 1 or ``q + 1`` for a prime
    ``q = 3 (mod 4)`` (Paley I); this covers every power of two and the common widths 12*2^k (768),
    20*2^k, 24*2^k, ...
    """
    k, m = 0, n
    while m % 2 == 0 and m > 1:
        m //= 2
        k += 1
    while True:
        if m == 1:
            base = torch.ones(1, 1, dtype=torch.float64)
            break
        if (m - 1) % 4 == 3 and _is_prime(m - 1):
            base = _paley_hadamard(m - 1)
            break
        if k == 0:
            return None
        m, k = m * 2, k - 1
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    for _ in range(k):
        base = torch.kron(base, h2)
    return base / math.sqrt(n)


class PHIStandardizer(nn.Module):
    """PHI-S (PCA-Hadamard isotropic standardisation, RADIO v2.5 / FeatSharp) of one teacher's features.

    ``x_hat = alpha * H U^T (x - mean)`` per token, with ``U`` the eigenvectors of the feature
    covariance, ``H`` a normalised Hadamard matrix and ``alpha = 1 / sqrt(mean eigenvalue)``. After it
    the features have zero mean, total variance equal to the number of channels, and (thanks to
    ``H``) every channel has variance 1. When no Hadamard matrix of that width exists the PCA
    rotation alone is used (isotropic scale still applies) and a warning is logged.

    The statistics are computed once with :meth:`fit` and kept in buffers; ``save``/``load`` store them.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("rotation", torch.eye(dim))
        self.register_buffer("alpha", torch.ones(()))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @property
    def fitted(self) -> bool:
        return bool(self.count > 0)

    @staticmethod
    def _tokens(features: torch.Tensor) -> torch.Tensor:
        """``[N, C]`` or ``[B, C, h, w]`` -> ``[tokens, C]`` in float64."""
        if features.dim() == 4:
            features = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
        elif features.dim() != 2:
            raise ValueError(f"PHI-S features must be [N, C] or [B, C, h, w], got {tuple(features.shape)}")
        return features.detach().to(device="cpu", dtype=torch.float64)

    @torch.no_grad()
    def fit(self, features: Iterable[torch.Tensor]) -> PHIStandardizer:
        """Compute mean, rotation and scale from batches of stored features (each ``[N, C]`` or ``[B, C, h, w]``).

        Streaming: only ``C x C`` float64 sums are kept, so any number of batches fits in memory.
        """
        total = 0
        acc_sum = torch.zeros(self.dim, dtype=torch.float64)
        acc_outer = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        for batch in features:
            tokens = self._tokens(batch)
            if tokens.shape[1] != self.dim:
                raise ValueError(f"PHI-S was built for {self.dim} channels but got features with {tokens.shape[1]}")
            total += tokens.shape[0]
            acc_sum += tokens.sum(0)
            acc_outer += tokens.T @ tokens
        if total < 2:
            raise ValueError("PHI-S needs at least 2 feature tokens to fit")
        mean = acc_sum / total
        cov = (acc_outer - total * torch.outer(mean, mean)) / (total - 1)
        eigvals, eigvecs = torch.linalg.eigh(cov)
        eigvals = eigvals.clamp_min(0.0)
        if float(eigvals.mean()) <= 0.0:
            raise ValueError("PHI-S: the features have zero variance; check the teacher feature store")
        hadamard = hadamard_matrix(self.dim)
        if hadamard is None:
            logger.warning("PHI-S: no Hadamard matrix of order %d; using the PCA rotation only", self.dim)
            rotation = eigvecs.T
        else:
            rotation = hadamard @ eigvecs.T
        self.mean.copy_(mean.float())
        self.rotation.copy_(rotation.float())
        self.alpha.copy_(eigvals.mean().rsqrt().float())
        self.count.fill_(total)
        return self

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(
                "PHIStandardizer is not fitted: call fit() on stored teacher features or load() a saved one"
            )

    def standardize(self, dense: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` (or ``[N, C]``) teacher features -> the same shape in PHI-S space (float32)."""
        self._check_fitted()
        x = dense.float()
        mean = self.mean.view(1, -1, *([1] * (x.dim() - 2)))
        return self.alpha * torch.einsum("dc,bc...->bd...", self.rotation, x - mean)

    def destandardize(self, dense: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`standardize` (maps head outputs back to the teacher's feature space)."""
        self._check_fitted()
        x = torch.einsum("dc,bd...->bc...", self.rotation, dense.float()) / self.alpha
        return x + self.mean.view(1, -1, *([1] * (x.dim() - 2)))

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return self.standardize(dense)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        """Write the statistics to ``path`` (a ``.pt`` dict of tensors) atomically; an existing file is kept unless
        ``overwrite``."""
        self._check_fitted()
        save_torch({k: v.cpu() for k, v in self.state_dict().items()}, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PHIStandardizer:
        """Read statistics written by :meth:`save`."""
        state = read_state_dict(path, "PHI-S statistics")
        if "mean" not in state or "rotation" not in state:
            raise ValueError(f"{path} is not a PHI-S statistics file (expected keys mean, rotation, alpha, count)")
        standardizer = cls(int(state["mean"].shape[0]))
        standardizer.load_state_dict(state, strict=True)
        return standardizer
