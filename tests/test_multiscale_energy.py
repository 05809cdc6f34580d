"""Normalized conditional energies (beyond both papers): the RF-limited conditional network, its
binding, per-image normalization at t_max and the multi-scale NLL against the exact Gaussian field."""

import math

import pytest
import torch
from torch import nn

from _dense_gaussian import field_wavelet_gaussians
from _train_helpers import tiny_spec
from image_density import likelihood
from image_density.models import build_model
from image_density.models.gaussian import GaussianEnergy
from image_density.models.local_energy import LocalEnergyCNN
from image_density.multiscale.conditional import (
    energy_objective,
    multiscale_log_prob,
    normalized_conditional,
    normalized_lowpass,
)
from image_density.multiscale.wavelets import pyramid
from image_density.train import ImageSource, train

N, LEVELS, T_MAX = 16, 2, 1e4


class ExactLowpass(nn.Module):
    """The energy face of the exact x_J marginal: U = -log p_t + 5 (so log Z = -5, to be found)."""

    def __init__(self, gaussian):
        super().__init__()
        self.gaussian = gaussian
        self.register_buffer("dtype_probe", torch.zeros((), dtype=torch.float64))

    def energy(self, y, t):
        return -self.gaussian.log_prob(y, t) + 5.0


class ExactConditional(ExactLowpass):
    """The exact d_j | x_j with the face of models/local_energy.py (`bind`), plus an offset c(x_j)
    that dual score matching cannot see: only a per-image normalization removes it."""

    def __init__(self, conditional):
        super().__init__(None)
        self.conditional = conditional
        self.x_j = None

    def bind(self, x_j):
        model = self

        class Bound:
            def __enter__(self):
                model.x_j = x_j

            def __exit__(self, *exc):
                model.x_j = None

        return Bound()

    def energy(self, d, t):
        offset = 40.0 * (self.x_j.flatten(1).sum(1) - self.x_j.flatten(1).sum(1).mean())
        return -self.conditional.at(self.x_j).log_prob(d, t) + offset


@pytest.fixture(scope="module")
def field():
    f, low, conds = field_wavelet_gaussians(N, LEVELS)
    return f, GaussianEnergy(torch.from_numpy(f.eigenvalues), f.spec.mean), low, conds


def test_exact_pieces_give_the_single_scale_nll_through_the_learned_path(field):
    # Every estimate a learned model goes through: log Z of the low-pass at t_max on "training"
    # images, each conditional normalized per image at t_max, composed by multiscale_log_prob.
    f, g, low, conds = field
    gen = torch.Generator().manual_seed(0)
    x = f.sample(16, gen)
    x_train = f.sample(256, gen)
    lowpass = ExactLowpass(low)
    log_z = likelihood.log_z(lowpass, pyramid(x_train, LEVELS)[0][-1], T_MAX, draws=4, generator=gen)
    assert log_z == pytest.approx(-5.0, abs=2e-3)  # nats over d_J = 16; measured -5.0004
    conditionals = [normalized_conditional(ExactConditional(c), 0.0, T_MAX, 16, gen) for c in conds]
    out = multiscale_log_prob(x, normalized_lowpass(lowpass, log_z, 0.0), conditionals)
    err_bits = (out["log_p"] + g.nll_exact(x)) / (N * N * math.log(2))
    assert err_bits.mean().abs().item() < 1e-5  # measured 3e-8
    assert err_bits.abs().max().item() < 1e-4  # per image, measured 4e-5 (the draws at t_max)
    # the offsets c(x_j) span many bits/dim: one log Z averaged over images could not remove them
    x_1 = pyramid(x, LEVELS)[0][0]
    spread = 40.0 * (x_1.flatten(1).sum(1).max() - x_1.flatten(1).sum(1).min()) / (N * N * math.log(2))
    assert spread > 1.0


def gradient_support(net: LocalEnergyCNN, x_j: torch.Tensor, size: int) -> tuple[int, int]:
    """Side of the input box that the centre output depends on: in the details, in the low-pass."""
    d = torch.randn(
        1, net.channels, size, size, generator=torch.Generator().manual_seed(1), requires_grad=True
    )
    x_j = x_j.clone().requires_grad_(True)
    with net.bind(x_j):
        out = net(d, torch.full((1,), 0.1))
    sides = []
    for g in torch.autograd.grad(out[0, :, size // 2, size // 2].sum(), (d, x_j)):
        rows, cols = torch.nonzero(g.abs().sum(dim=(0, 1)), as_tuple=True)
        sides.append(int(rows.max() - rows.min() + 1))
    return tuple(sides)


@pytest.mark.parametrize("rf", [3, 7])
def test_conditional_energy_network_is_local(rf):
    # no normalization layer pools over the image: the receptive field is exactly rf
    torch.manual_seed(0)
    net = LocalEnergyCNN(channels=3, cond_channels=1, layers=5, width=8, rf=rf, emb_features=4, emb_dim=8)
    nn.init.normal_(net.convs[-1].weight)  # zero at initialization, which would hide the support
    assert net.rf == rf
    assert gradient_support(net, torch.rand(1, 1, 21, 21), 21) == (rf, rf)


def test_binding_is_required_scoped_and_checked():
    net = LocalEnergyCNN(channels=3, cond_channels=1, layers=3, width=4, rf=3, emb_features=2, emb_dim=4)
    d, t = torch.randn(2, 3, 4, 4), torch.ones(2)
    with pytest.raises(RuntimeError, match="bind"):
        net(d, t)
    with net.bind(torch.rand(2, 1, 4, 4)):
        assert net(d, t).shape == d.shape
        with pytest.raises(ValueError, match="does not match"):
            net(d[:1], t[:1])
    assert net._x_j is None
    with pytest.raises(ValueError, match="conditioning image must be"):
        net.bind(torch.rand(2, 3, 4, 4)).__enter__()


def test_learned_multiscale_energy_trains_and_gives_a_finite_nll(tmp_path, field):
    f = field[0]
    x_all = f.sample(64, torch.Generator().manual_seed(2)).float()
    images = ImageSource(len(x_all), lambda i: x_all[torch.as_tensor(i)])
    lows, details = pyramid(x_all, LEVELS)
    spec = tiny_spec(steps=3, batch=8, t_min=1e-4, t_max=T_MAX)
    cnn = {"arch": "local_energy_cnn", "layers": 3, "width": 8, "emb_features": 4, "emb_dim": 8,
           "padding_mode": "circular"}  # fmt: skip
    # the low-pass energy without conditioning (multiscale.energy.lowpass = "cnn"), all 3x3
    low_spec = {
        **cnn,
        "channels": 1,
        "cond_channels": 0,
        "rf": None,
        "band_var": lows[-1].square().mean().item(),
    }
    models = []
    for j, model_spec in [(None, low_spec)] + [
        (j, {**cnn, "channels": 3, "cond_channels": 1, "rf": 3, "band_var": details[j].square().mean().item(),
             "cond_scale": lows[j].square().mean().sqrt().item()})
        for j in range(LEVELS)
    ]:  # fmt: skip
        torch.manual_seed(0)
        net = build_model(model_spec)
        res = train(
            net, energy_objective(LEVELS, j), images, spec, tmp_path / str(j), model_spec, progress=False
        )
        assert res.step == 3
        models.append(net.eval())
    gen = torch.Generator().manual_seed(3)
    log_z = likelihood.log_z(models[0], lows[-1], T_MAX, draws=2, generator=gen)
    conds = [normalized_conditional(m, 1e-4, T_MAX, 2, gen) for m in models[1:]]
    out = multiscale_log_prob(x_all[:8], normalized_lowpass(models[0], log_z, 1e-4), conds)
    assert out["log_p"].shape == (8,) and torch.isfinite(out["log_p"]).all()
