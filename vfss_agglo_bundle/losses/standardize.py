"""Standardising each teacher's targets before their losses are mixed: per-channel z-score, or PHI-S (RADIO v2.5 /
FeatSharp).

``standardize: none | zscore | phi_s`` in train.yaml picks one for every teacher. The statistics are fitted once
from the teacher's feature store (every stored frame and view) by :func:`store_standardizers` and saved with the
store through its reader (:meth:`~vfss_agglo_bundle.data.feature_store.TeacherFeatureReader.write_statistics`,
which records the teacher signature they were fitted on); statistics of another signature are refused.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
import torch.nn as nn
from vfss_agglo_bundle.data.feature_store import TeacherFeatureReader
from vfss_agglo_bundle.utils.distributed import main_process_first
from vfss_agglo_bundle.utils.io import save_torch
from vfss_agglo_bundle.utils.registry import check_name
from vfss_agglo_bundle.utils.state_dict import read_state_dict

__all__ = [
    "STANDARDIZATIONS",
    "PHIStandardizer",
    "ZScoreStandardizer",
    "check_standardization",
    "hadamard_matrix",
    "store_standardizers",
]

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


class _FittedStatistics(nn.Module):
    """What both standardizers share: statistics in buffers (``count`` > 0 once fitted), ``forward`` =
    ``standardize``, and atomic ``save`` / checked ``load`` of the buffers as a ``.pt`` dict of tensors."""

    LABEL = "statistics"  # names the file kind in errors
    KEYS: tuple[str, ...] = ()  # buffers a saved file must hold

    @property
    def fitted(self) -> bool:
        return bool(self.count > 0)

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(
                f"{type(self).__name__} is not fitted: call fit() on stored teacher features or load() a saved one"
            )

    def standardize(self, dense: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _tokens(self, batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Each ``[N, C]`` or ``[B, C, h, w]`` batch as ``[tokens, C]`` float64 on the CPU, checked against ``dim``."""
        for features in batches:
            if features.dim() == 4:
                features = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
            elif features.dim() != 2:
                raise ValueError(f"{self.LABEL}: features must be [N, C] or [B, C, h, w], got {tuple(features.shape)}")
            if features.shape[1] != self.dim:
                raise ValueError(
                    f"{self.LABEL} built for {self.dim} channels but got features with {features.shape[1]}"
                )
            yield features.detach().to(device="cpu", dtype=torch.float64)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return self.standardize(dense)

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        """Write the statistics to ``path`` atomically; an existing file is kept unless ``overwrite``."""
        self._check_fitted()
        save_torch({k: v.cpu() for k, v in self.state_dict().items()}, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> _FittedStatistics:
        """Read statistics written by :meth:`save`."""
        return cls.from_state(read_state_dict(path, cls.LABEL), str(path))

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor], source: str) -> _FittedStatistics:
        """Statistics from their buffers (``state_dict()``); ``source`` names where they came from in errors."""
        if any(key not in state for key in cls.KEYS):
            raise ValueError(f"{source} is not a {cls.LABEL} file (expected keys {', '.join(cls.KEYS)})")
        standardizer = cls(int(state["mean"].shape[0]))
        standardizer.load_state_dict(state, strict=True)
        return standardizer


class PHIStandardizer(_FittedStatistics):
    """PHI-S (PCA-Hadamard isotropic standardisation, RADIO v2.5 / FeatSharp) of one teacher's features.

    ``x_hat = alpha * H U^T (x - mean)`` per token, with ``U`` the eigenvectors of the feature
    covariance, ``H`` a normalised Hadamard matrix and ``alpha = 1 / sqrt(mean eigenvalue)``. After it
    the features have zero mean, total variance equal to the number of channels, and (thanks to
    ``H``) every channel has variance 1. When no Hadamard matrix of that width exists the PCA
    rotation alone is used (isotropic scale still applies) and a warning is logged.

    The statistics are computed once with :meth:`fit` and kept in buffers; ``save``/``load`` store them.
    """

    LABEL = "PHI-S statistics"
    KEYS = ("mean", "rotation", "alpha", "count")

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("rotation", torch.eye(dim))
        self.register_buffer("alpha", torch.ones(()))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def fit(self, features: Iterable[torch.Tensor]) -> PHIStandardizer:
        """Compute mean, rotation and scale from batches of stored features (each ``[N, C]`` or ``[B, C, h, w]``).

        Streaming: only ``C x C`` float64 sums are kept, so any number of batches fits in memory.
        """
        total = 0
        acc_sum = torch.zeros(self.dim, dtype=torch.float64)
        acc_outer = torch.zeros(self.dim, self.dim, dtype=torch.float64)
        for tokens in self._tokens(features):
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


class ZScoreStandardizer(_FittedStatistics):
    """Per-channel z-score of one teacher's features: ``x_hat_c = (x_c - mean_c) / std_c`` per token (Theia, UNIC).

    The statistics are computed once with :meth:`fit` and kept in buffers; ``save``/``load`` store them.
    """

    LABEL = "z-score statistics"
    KEYS = ("mean", "std", "count")

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def fit(self, features: Iterable[torch.Tensor]) -> ZScoreStandardizer:
        """Per-channel mean and standard deviation over every token of the batches (``[N, C]`` or ``[B, C, h, w]``),
        streaming."""
        total, acc, acc_sq = 0, torch.zeros(self.dim, dtype=torch.float64), torch.zeros(self.dim, dtype=torch.float64)
        for tokens in self._tokens(features):
            total += tokens.shape[0]
            acc += tokens.sum(0)
            acc_sq += (tokens**2).sum(0)
        if total < 2:
            raise ValueError("z-score needs at least 2 feature tokens to fit")
        mean = acc / total
        var = ((acc_sq - total * mean**2) / (total - 1)).clamp_min(0.0)
        self.mean.copy_(mean.float())
        self.std.copy_(var.sqrt().clamp_min(1e-6).float())
        self.count.fill_(total)
        return self

    def standardize(self, dense: torch.Tensor) -> torch.Tensor:
        """``[B, C, h, w]`` (or ``[N, C]``) teacher features -> z-scores of the same shape (float32)."""
        self._check_fitted()
        shape = (1, -1, *([1] * (dense.dim() - 2)))
        return (dense.float() - self.mean.view(shape)) / self.std.view(shape)


STANDARDIZATIONS: dict[str, type[nn.Module] | None] = {
    "none": None,
    "zscore": ZScoreStandardizer,
    "phi_s": PHIStandardizer,
}


def check_standardization(name: str) -> None:
    """Raise a ``ValueError`` listing the choices when ``name`` is not ``none``, ``zscore`` or ``phi_s``."""
    check_name(name, STANDARDIZATIONS, "target standardisation")


def store_standardizers(readers: Mapping[str, TeacherFeatureReader], kind: str = "none") -> dict[str, Any]:
    """One fitted standardizer per teacher store (``{}`` for ``kind="none"``), fitted once and saved with the store.

    Raises:
        ValueError: an unknown ``kind``, or saved statistics fitted on a store of another teacher signature.
    """
    check_standardization(kind)
    cls = STANDARDIZATIONS[kind]
    if cls is None:
        return {}
    fitted = {}
    for name, reader in readers.items():
        with main_process_first(f"fitting the {kind} statistics of teacher {name!r}"):  # torchrun: rank 0 fits
            state = reader.read_statistics(kind)
            if state is None:
                items = reader.stored()
                logger.info("%s statistics of teacher %s: fitting on %d stored views", kind, name, len(items))
                standardizer = cls(reader.dense_dim).fit(reader.read(key, view)["dense"][None] for key, view in items)
                state = reader.write_statistics(kind, standardizer.state_dict(), views=len(items))
        fitted[name] = cls.from_state(state, f"{kind} statistics of teacher {name!r} in {reader.directory}")
    return fitted
