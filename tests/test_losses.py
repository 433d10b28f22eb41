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
    assert get_loss(name)(x, x.clone()).tolist() == pytest.approx([0.0, 0.0], abs=1e-6)  # one value per sample


def test_opposite_inputs_give_known_values():
    target = torch.randn(2, 6, 4, 4).sign()  # entries +-1
    pred = -target
    assert cosine(pred, target).tolist() == pytest.approx([2.0, 2.0], abs=1e-6)
    assert mse(pred, target).tolist() == pytest.approx([4.0, 4.0], abs=1e-6)
    # 0.9 * (1 - (-1)) + 0.1 * smoothL1(|d| = 2) = 1.8 + 0.1 * 1.5
    assert cosine_smooth_l1(pred, target).tolist() == pytest.approx([1.95, 1.95], abs=1e-6)


def test_orthogonal_tokens_and_summary_shape():
    pred = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    target = torch.tensor([[0.0, 3.0], [0.0, 1.0]])
    # sample 1: cos 0 -> 1; sample 2: cos 1 -> 0
    assert cosine(pred, target).tolist() == pytest.approx([1.0, 0.0])


def test_per_sample_losses_average_each_samples_tokens():
    pred, target = torch.zeros(2, 3, 2, 2), torch.zeros(2, 3, 2, 2)
    target[1, :, 0, 0] = 2.0  # one token of sample 1 differs by 2 in each of 3 channels
    assert mse(pred, target).tolist() == pytest.approx([0.0, 4.0 / 4])  # (3 * 4 / 3 channels) / 4 tokens


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
    assert losses["a"].shape == (2,)
    torch.testing.assert_close(losses["a"], cosine_smooth_l1(dense_p, dense_t) + 0.5 * cosine(summ_p, summ_t))
    torch.testing.assert_close(losses["b"], mse(dense_p, dense_t))


def test_distillation_loss_uses_phi_s_targets():
    batches = _anisotropic_batches(12)
    phi = PHIStandardizer(12).fit(batches)
    pred = torch.randn(20, 12, 10, 10)
    loss_fn = DistillationLoss(["a"], dense_loss="mse", standardizers={"a": phi})
    loss = loss_fn({"a": (None, pred)}, {"a": (None, batches[0].half())})["a"]
    torch.testing.assert_close(loss, mse(pred, phi.standardize(batches[0].half())), rtol=1e-6, atol=1e-7)


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

FEATURES = 6  # student summary length in these tests


def _features(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, FEATURES, generator=torch.Generator().manual_seed(seed))


def _balancer(name: str, teachers=NAMES, **kwargs):
    return build_balancer(name, teachers, feature_dim=FEATURES, init_seed=0, **kwargs)


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_balancer_weights_are_normalised(name):
    balancer = _balancer(name)
    losses = {
        "medsam": torch.tensor([0.5, 0.4]),
        "rad_dino": torch.tensor([2.0, 1.0]),
        "medclip": torch.tensor([0.1, 0.3]),
    }
    total, weights = balancer(losses, _features(2))
    assert total.dim() == 0 and torch.isfinite(total)
    assert weights.shape == (2, 3)  # [B, K]
    assert torch.allclose(weights.sum(1), torch.ones(2), atol=1e-6) and (weights >= 0).all()
    assert torch.allclose(balancer.weights, weights.mean(0))
    with pytest.raises(KeyError, match="medclip"):
        balancer({"medsam": torch.tensor([1.0])}, _features(1))


def test_build_balancer_unknown_and_attention_needs_the_summary_length():
    with pytest.raises(ValueError, match="attention"):
        build_balancer("gradnorm", NAMES)
    with pytest.raises(ValueError, match="feature_dim"):
        build_balancer("attention", NAMES)
    balancer = _balancer("attention")
    with pytest.raises(ValueError, match="student summary"):
        balancer({n: torch.ones(2) for n in NAMES}, _features(3))


def test_balancer_parameters_come_from_their_own_stream():
    torch.manual_seed(123)
    a = _balancer("attention")
    torch.manual_seed(456)
    b = _balancer("attention")
    assert torch.equal(a.keys, b.keys)  # what ran before does not matter
    assert not torch.equal(a.keys, build_balancer("attention", NAMES, feature_dim=FEATURES, init_seed=1).keys)


def test_fixed_balancer_normalises_config_weights():
    balancer = _balancer("fixed", weights={"medsam": 2.0, "rad_dino": 1.0, "medclip": 1.0})
    total, weights = balancer(
        {"medsam": torch.tensor([1.0, 3.0]), "rad_dino": torch.tensor([2.0, 2.0]), "medclip": torch.tensor([4.0, 4.0])}
    )
    assert weights.flatten().tolist() == pytest.approx([0.5, 0.25, 0.25] * 2)
    assert total.item() == pytest.approx(0.5 * 2.0 + 0.25 * 2.0 + 0.25 * 4.0)  # batch means 2, 2, 4
    with pytest.raises(ValueError, match="must name exactly"):
        _balancer("fixed", weights={"medsam": 1.0})


def test_uncertainty_balancer_value_and_gradient():
    balancer = _balancer("uncertainty", ["a", "b"])
    with torch.no_grad():
        balancer.log_var.copy_(torch.tensor([0.5, -1.0]))
    la = torch.tensor([2.0], requires_grad=True)
    lb = torch.tensor([3.0], requires_grad=True)
    total, weights = balancer({"a": la, "b": lb})
    u = torch.tensor([0.5, -1.0])
    assert total.item() == pytest.approx((torch.exp(-u) * torch.tensor([2.0, 3.0]) + u / 2).sum().item())
    total.backward()
    assert la.grad.item() == pytest.approx(math.exp(-0.5))
    expected = -torch.exp(-u) * torch.tensor([2.0, 3.0]) + 0.5
    assert torch.allclose(balancer.log_var.grad, expected)
    assert weights[0, 1] > weights[0, 0]


@pytest.mark.parametrize("name", ["mlp", "attention"])
def test_guarded_balancer_gradients_are_separated(name):
    balancer = _balancer(name, ["a", "b"], ref_steps=1)
    balancer({"a": torch.tensor([2.0, 2.0]), "b": torch.tensor([8.0, 8.0])}, _features(2))  # the reference losses
    la = torch.tensor([1.0, 3.0], requires_grad=True)
    lb = torch.tensor([8.0, 4.0], requires_grad=True)
    total, weights = balancer({"a": la, "b": lb}, _features(2))
    # the student gets detached per-sample weights on losses normalised by their reference, averaged over samples
    expected = ((weights[:, 0] * la / 2.0 + weights[:, 1] * lb / 8.0).mean()).item()
    assert total.item() == pytest.approx(expected)
    total.backward()
    assert la.grad.tolist() == pytest.approx((weights[:, 0] / 2.0 / 2).tolist())
    assert lb.grad.tolist() == pytest.approx((weights[:, 1] / 8.0 / 2).tolist())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in balancer.parameters())


def _toy_run(name, scale=(1.0, 1.0, 1.0), floor=(0.5, 0.5, 0.5), steps=200):
    """Shared parameters pulled towards three conflicting targets; loss_i = scale_i * (distance_i + floor_i),
    one sample with a fixed student summary."""
    torch.manual_seed(0)
    balancer = _balancer(name)
    targets = torch.randn(3, 8)
    features = _features(1)
    theta = torch.zeros(8, requires_grad=True)
    groups = [{"params": [theta]}] + ([{"params": list(balancer.parameters())}] if list(balancer.parameters()) else [])
    optimizer = torch.optim.Adam(groups, lr=0.05)
    for _ in range(steps):
        raw = {n: scale[i] * (((theta - targets[i]) ** 2).mean() + floor[i]).reshape(1) for i, n in enumerate(NAMES)}
        total, weights = balancer(raw, features)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    values = {n: v.item() for n, v in raw.items()}
    return dict(zip(NAMES, weights[0].tolist(), strict=True)), values


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


def test_attention_weighs_two_different_inputs_of_a_batch_differently():
    """Frames of kind A are hard for teacher a, frames of kind B for teacher b: the attention balancer, whose
    query reads each frame's student summary, learns opposite weights for the two kinds; the MLP, one weight
    vector per batch, cannot."""
    kinds = torch.cat([_features(1, seed=1).expand(4, -1), _features(1, seed=2).expand(4, -1)])
    losses = {"a": torch.tensor([2.0] * 4 + [1.0] * 4), "b": torch.tensor([1.0] * 4 + [2.0] * 4)}
    learned = {}
    for name in ("attention", "mlp"):
        balancer = _balancer(name, ["a", "b"])
        optimizer = torch.optim.Adam(balancer.parameters(), lr=0.05)
        for _ in range(150):
            total, weights = balancer(losses, kinds)
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
        learned[name] = weights
    attention = learned["attention"]
    assert attention[0, 0] > 0.6 > 0.4 > attention[0, 1]  # kind A: teacher a
    assert attention[4, 1] > 0.6 > 0.4 > attention[4, 0]  # kind B: teacher b
    assert attention[:4].std(0).max() < 1e-6 and attention[:, 0].std() > 0.1  # spread over samples, by kind
    assert torch.allclose(learned["mlp"], learned["mlp"][:1].expand(8, -1))  # the MLP: one row for the batch


def test_uncertainty_balancer_equalises_contributions_of_a_scaled_teacher():
    weights, losses = _toy_run("uncertainty", scale=(1.0, 100.0, 1.0))
    contributions = {n: weights[n] * losses[n] for n in NAMES}
    share = contributions["rad_dino"] / sum(contributions.values())
    assert 0.1 < share < 0.9  # unweighted it would be ~0.98
    assert weights["rad_dino"] < min(weights["medsam"], weights["medclip"])


@pytest.mark.parametrize("name", sorted(BALANCERS))
def test_balancer_state_dict_round_trip(name):
    balancer = _balancer(name)
    optimizer = torch.optim.Adam(balancer.parameters(), lr=0.1) if list(balancer.parameters()) else None
    for step in range(15):
        losses = {n: torch.tensor([1.0 + i + 0.1 * step, 2.0 - 0.1 * i]) / (step + 1) for i, n in enumerate(NAMES)}
        total, _ = balancer(losses, _features(2, seed=step))
        if optimizer is not None:
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
    restored = build_balancer(name, NAMES, feature_dim=FEATURES, init_seed=5)
    restored.load_state_dict(balancer.state_dict())
    probe = {n: torch.tensor([0.3 * (i + 1), 0.2]) for i, n in enumerate(NAMES)}
    total_a, weights_a = balancer(probe, _features(2, seed=99))
    total_b, weights_b = restored(probe, _features(2, seed=99))
    assert torch.allclose(weights_a, weights_b)
    assert total_a.item() == pytest.approx(total_b.item())
