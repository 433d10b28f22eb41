"""Distillation losses, PHI-S and the loss balancers."""

import math
import os

import pytest
import torch
from vfss_agglo_bundle.losses import (
    BALANCERS,
    LOSSES,
    DistillationLoss,
    PHIStandardizer,
    build_balancer,
    cosine,
    cosine_smooth_l1,
    get_loss,
    hadamard_matrix,
    mse,
)

NAMES = ["medsam", "rad_dino", "medclip"]


# ----------------------------------------------------------------------------------------- losses


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_identical_inputs_give_zero(name):
    x = torch.randn(2, 8, 5, 3)
    assert get_loss(name)(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_opposite_inputs_give_known_values():
    target = torch.randn(2, 6, 4, 4).sign()  # entries +-1
    pred = -target
    assert cosine(pred, target).item() == pytest.approx(2.0, abs=1e-6)
    assert mse(pred, target).item() == pytest.approx(4.0, abs=1e-6)
    # 0.9 * (1 - (-1)) + 0.1 * smoothL1(|d| = 2) = 1.8 + 0.1 * 1.5
    assert cosine_smooth_l1(pred, target).item() == pytest.approx(1.95, abs=1e-6)


def test_orthogonal_tokens_and_summary_shape():
    pred = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    target = torch.tensor([[0.0, 3.0], [0.0, 1.0]])
    # token 1: cos 0 -> 1; token 2: cos 1 -> 0; mean 0.5
    assert cosine(pred, target).item() == pytest.approx(0.5)


def test_loss_errors():
    with pytest.raises(ValueError, match="cosine_smooth_l1"):
        get_loss("kl")
    with pytest.raises(ValueError, match="shape"):
        mse(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 3, 3))


# ------------------------------------------------------------------------------------------ PHI-S


@pytest.mark.parametrize("n", [1, 2, 12, 20, 256, 768])
def test_hadamard_is_orthogonal_with_equal_magnitudes(n):
    h = hadamard_matrix(n)
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=h.dtype), atol=1e-10)
    assert torch.allclose(h.abs(), torch.full_like(h, 1 / math.sqrt(n)))


def test_hadamard_missing_order():
    assert hadamard_matrix(10) is None


def _anisotropic_batches(dim, seed=0):
    """Features [B, dim, h, w] with mean 3 and eigenvalues spread over 4 orders of magnitude."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
    scales = torch.logspace(-2, 0, dim)
    batches = []
    for _ in range(4):
        tokens = (torch.randn(2000, dim, generator=g) * scales) @ q.T + 3.0
        batches.append(tokens.reshape(20, 10, 10, dim).permute(0, 3, 1, 2).contiguous())
    return batches


@pytest.mark.parametrize("dim", [32, 10])
def test_phi_s_standardises_to_zero_mean_unit_isotropic_scale(dim):
    batches = _anisotropic_batches(dim)
    phi = PHIStandardizer(dim).fit(iter(batches))
    out = torch.cat([phi.standardize(b) for b in batches])
    tokens = out.permute(0, 2, 3, 1).reshape(-1, dim).double()
    cov = torch.cov(tokens.T)
    assert tokens.mean(0).abs().max() < 1e-3
    assert torch.trace(cov) / dim == pytest.approx(1.0, rel=1e-3)
    # the eigenvalues are the input ones times one isotropic factor alpha^2
    inputs = torch.cat(batches).permute(0, 2, 3, 1).reshape(-1, dim).double()
    in_eig = torch.linalg.eigvalsh(torch.cov(inputs.T))
    assert torch.allclose(torch.linalg.eigvalsh(cov), in_eig / in_eig.mean(), rtol=1e-3, atol=1e-6)
    if dim == 32:  # with a Hadamard rotation every channel has unit variance
        assert torch.allclose(torch.diag(cov), torch.ones(dim, dtype=cov.dtype), atol=1e-3)
    assert torch.allclose(phi.destandardize(phi.standardize(batches[0])), batches[0], atol=1e-3)


def test_phi_s_save_load_round_trip(tmp_path):
    batches = _anisotropic_batches(12)
    phi = PHIStandardizer(12).fit(batches)
    path = tmp_path / "phi_s" / "medsam.pt"
    phi.save(path)
    assert os.listdir(path.parent) == ["medsam.pt"]  # no temp file left behind
    loaded = PHIStandardizer.load(path)
    assert torch.equal(loaded.standardize(batches[1]), phi.standardize(batches[1]))
    assert loaded.fitted and int(loaded.count) == 8000


def test_phi_s_errors(tmp_path):
    with pytest.raises(RuntimeError, match="not fitted"):
        PHIStandardizer(4).standardize(torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match="4 channels"):
        PHIStandardizer(4).fit([torch.zeros(3, 5)])
    with pytest.raises(FileNotFoundError):
        PHIStandardizer.load(tmp_path / "none.pt")
    torch.save({"weight": torch.zeros(2)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        PHIStandardizer.load(tmp_path / "bad.pt")


# ------------------------------------------------------------------------------ DistillationLoss


def test_distillation_loss_combines_dense_and_summary():
    torch.manual_seed(0)
    dense_t, dense_p = torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4)
    summ_t, summ_p = torch.randn(2, 6), torch.randn(2, 6)
    outputs = {"a": (summ_p, dense_p), "b": (None, dense_p)}
    targets = {"a": (summ_t, dense_t), "b": (None, dense_t)}
    loss_fn = DistillationLoss(["a", "b"], dense_loss={"a": "cosine_smooth_l1", "b": "mse"}, summary_weight=0.5)
    losses = loss_fn(outputs, targets)
    assert losses["a"].item() == pytest.approx(
        (cosine_smooth_l1(dense_p, dense_t) + 0.5 * cosine(summ_p, summ_t)).item()
    )
    assert losses["b"].item() == pytest.approx(mse(dense_p, dense_t).item())


def test_distillation_loss_uses_phi_s_targets():
    batches = _anisotropic_batches(12)
    phi = PHIStandardizer(12).fit(batches)
    pred = torch.randn(20, 12, 10, 10)
    loss_fn = DistillationLoss(["a"], dense_loss="mse", standardizers={"a": phi})
    loss = loss_fn({"a": (None, pred)}, {"a": (None, batches[0].half())})["a"]
    assert loss.item() == pytest.approx(mse(pred, phi.standardize(batches[0].half())).item(), rel=1e-6)


def test_distillation_loss_errors():
    with pytest.raises(ValueError, match="no entry"):
        DistillationLoss(["a", "b"], dense_loss={"a": "mse"})
    with pytest.raises(ValueError, match="unknown teachers"):
        DistillationLoss(["a"], standardizers={"z": PHIStandardizer(2)})
    loss_fn = DistillationLoss(["a"])
    with pytest.raises(KeyError, match="'a'"):
        loss_fn({}, {})
    with pytest.raises(ValueError, match="teacher 'a'"):
        loss_fn({"a": (None, torch.zeros(1, 2, 3, 3))}, {"a": (None, torch.zeros(1, 2, 4, 4))})


# ------------------------------------------------------------------------------------- balancers


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_balancer_weights_are_normalised(name):
    balancer = build_balancer(name, NAMES)
    losses = {"medsam": torch.tensor(0.5), "rad_dino": torch.tensor(2.0), "medclip": torch.tensor(0.1)}
    total, weights = balancer(losses)
    assert total.dim() == 0 and torch.isfinite(total)
    assert list(weights) == NAMES
    assert sum(weights.values()) == pytest.approx(1.0, abs=1e-6)
    assert all(w >= 0 for w in weights.values())
    assert torch.allclose(balancer.weights, torch.tensor([weights[n] for n in NAMES]))
    with pytest.raises(KeyError, match="medclip"):
        balancer({"medsam": torch.tensor(1.0)})


def test_build_balancer_unknown():
    with pytest.raises(ValueError, match="attention"):
        build_balancer("gradnorm", NAMES)


def test_fixed_balancer_normalises_config_weights():
    balancer = build_balancer("fixed", NAMES, weights={"medsam": 2.0, "rad_dino": 1.0, "medclip": 1.0})
    total, weights = balancer(
        {"medsam": torch.tensor(1.0), "rad_dino": torch.tensor(2.0), "medclip": torch.tensor(4.0)}
    )
    assert weights == pytest.approx({"medsam": 0.5, "rad_dino": 0.25, "medclip": 0.25})
    assert total.item() == pytest.approx(0.5 + 0.5 + 1.0)
    with pytest.raises(ValueError, match="must name exactly"):
        build_balancer("fixed", NAMES, weights={"medsam": 1.0})


def test_uncertainty_balancer_value_and_gradient():
    balancer = build_balancer("uncertainty", ["a", "b"])
    with torch.no_grad():
        balancer.log_var.copy_(torch.tensor([0.5, -1.0]))
    la = torch.tensor(2.0, requires_grad=True)
    lb = torch.tensor(3.0, requires_grad=True)
    total, weights = balancer({"a": la, "b": lb})
    u = torch.tensor([0.5, -1.0])
    assert total.item() == pytest.approx((torch.exp(-u) * torch.tensor([2.0, 3.0]) + u / 2).sum().item())
    total.backward()
    assert la.grad.item() == pytest.approx(math.exp(-0.5))
    expected = -torch.exp(-u) * torch.tensor([2.0, 3.0]) + 0.5
    assert torch.allclose(balancer.log_var.grad, expected)
    assert weights["b"] > weights["a"]


@pytest.mark.parametrize("name", ["mlp", "attention"])
def test_guarded_balancer_gradients_are_separated(name):
    balancer = build_balancer(name, ["a", "b"], ref_steps=1)
    balancer({"a": torch.tensor(2.0), "b": torch.tensor(8.0)})  # sets the reference losses
    la = torch.tensor(1.0, requires_grad=True)
    lb = torch.tensor(8.0, requires_grad=True)
    total, weights = balancer({"a": la, "b": lb})
    # the student gets detached weights on losses normalised by their reference
    assert total.item() == pytest.approx(weights["a"] * 0.5 + weights["b"] * 1.0)
    total.backward()
    assert la.grad.item() == pytest.approx(weights["a"] / 2.0)
    assert lb.grad.item() == pytest.approx(weights["b"] / 8.0)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in balancer.parameters())


def _toy_run(name, scale=(1.0, 1.0, 1.0), floor=(0.5, 0.5, 0.5), steps=200):
    """Shared parameters pulled towards three conflicting targets; loss_i = scale_i * (distance_i + floor_i)."""
    torch.manual_seed(0)
    balancer = build_balancer(name, NAMES)
    targets = torch.randn(3, 8)
    theta = torch.zeros(8, requires_grad=True)
    groups = [{"params": [theta]}] + ([{"params": list(balancer.parameters())}] if list(balancer.parameters()) else [])
    optimizer = torch.optim.Adam(groups, lr=0.05)
    for _ in range(steps):
        raw = {n: scale[i] * (((theta - targets[i]) ** 2).mean() + floor[i]) for i, n in enumerate(NAMES)}
        total, weights = balancer(raw)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    values = {n: v.item() for n, v in raw.items()}
    return weights, values


@pytest.mark.parametrize("name", ["mlp", "attention"])
def test_guarded_balancer_ignores_loss_scale(name):
    plain, _ = _toy_run(name)
    scaled, _ = _toy_run(name, scale=(1.0, 100.0, 1.0))
    floor = 0.5 / 3
    for n in NAMES:
        assert scaled[n] == pytest.approx(plain[n], abs=1e-3)
        assert floor - 1e-6 <= scaled[n] <= 1 - 2 * floor + 1e-6
    assert 0.2 < scaled["rad_dino"] < 0.5


@pytest.mark.parametrize("name", ["mlp", "attention"])
def test_guarded_balancer_favours_the_slow_teacher_without_collapse(name):
    # medclip has a large irreducible loss, so its loss falls least relative to its start.
    weights, _ = _toy_run(name, floor=(0.1, 0.1, 3.0))
    assert weights["medclip"] > max(weights["medsam"], weights["rad_dino"])
    assert weights["medclip"] < 1 - 2 * (0.5 / 3) + 1e-6
    assert min(weights.values()) >= 0.5 / 3 - 1e-6


def test_uncertainty_balancer_equalises_contributions_of_a_scaled_teacher():
    weights, losses = _toy_run("uncertainty", scale=(1.0, 100.0, 1.0))
    contributions = {n: weights[n] * losses[n] for n in NAMES}
    share = contributions["rad_dino"] / sum(contributions.values())
    assert 0.1 < share < 0.9  # unweighted it would be ~0.98
    assert weights["rad_dino"] < min(weights["medsam"], weights["medclip"])


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_balancer_state_dict_round_trip(name):
    torch.manual_seed(1)
    balancer = build_balancer(name, NAMES)
    optimizer = torch.optim.Adam(balancer.parameters(), lr=0.1) if list(balancer.parameters()) else None
    for step in range(15):
        losses = {n: torch.tensor(1.0 + i + 0.1 * step) / (step + 1) for i, n in enumerate(NAMES)}
        total, _ = balancer(losses)
        if optimizer is not None:
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
    torch.manual_seed(2)
    restored = build_balancer(name, NAMES)
    restored.load_state_dict(balancer.state_dict())
    probe = {n: torch.tensor(0.3 * (i + 1)) for i, n in enumerate(NAMES)}
    total_a, weights_a = balancer(probe)
    total_b, weights_b = restored(probe)
    assert weights_a == pytest.approx(weights_b)
    assert total_a.item() == pytest.approx(total_b.item())
