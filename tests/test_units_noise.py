import math

import pytest
import torch

from image_density import noise, units


def test_bits_and_db_agree_with_method_formula():
    # METHOD.md: NLL bits/dim = 8 - 0.3322 x (log p in dB/dim) for 8-bit data.
    d, log_p = 4096, 11.43 * 4096 * math.log(10) / 10  # a log p of 11.43 dB/dim, in nats
    db = units.log_p_db_per_dim(log_p, d)
    assert db == pytest.approx(11.43)
    bits = units.nll_bits_per_dim(-log_p, d, quantized=True)
    assert bits == pytest.approx(8 - 0.33219 * 11.43, abs=1e-4)
    assert units.db_per_dim_to_bits_per_dim(db, quantized=True) == pytest.approx(bits)
    assert units.nll_bits_per_dim(-log_p, d, quantized=False) == pytest.approx(bits - 8)


def test_nats_bits_roundtrip():
    assert units.bits_to_nats(units.nats_to_bits(3.7)) == pytest.approx(3.7)
    assert units.nats_to_bits(math.log(2)) == pytest.approx(1.0)


@pytest.mark.parametrize("psnr", [90.0, 30.0, 0.0, -15.0])
def test_psnr_t_roundtrip(psnr):
    t = units.psnr_to_t(psnr)
    assert units.t_to_psnr(t) == pytest.approx(psnr)
    assert units.t_to_psnr(torch.tensor(t)).item() == pytest.approx(psnr)
    assert units.sigma255_to_t(255.0) == 1.0


def test_log_uniform_sampler_is_log_uniform_and_seeded():
    g = torch.Generator().manual_seed(0)
    t = noise.sample_log_uniform_t(200_000, 1e-9, 1e3, g)
    assert t.min() >= 1e-9 * (1 - 1e-5) and t.max() <= 1e3 * (1 + 1e-5)
    log_t = t.double().log10()
    # uniform on [-9, 3]: mean -3, variance 12^2/12
    assert log_t.mean().item() == pytest.approx(-3.0, abs=0.05)
    assert log_t.var().item() == pytest.approx(12.0, rel=0.02)
    again = noise.sample_log_uniform_t(200_000, 1e-9, 1e3, torch.Generator().manual_seed(0))
    assert torch.equal(t, again)
    with pytest.raises(ValueError, match="t_min"):
        noise.sample_log_uniform_t(4, 1.0, 0.1)


def test_grids():
    g = noise.t_grid(1e-12, 1e3, 16)
    assert g[0].item() == pytest.approx(1e-12) and g[-1].item() == pytest.approx(1e3)
    ratios = g[1:] / g[:-1]
    assert torch.allclose(ratios, ratios[0].expand_as(ratios))
    assert noise.t_grid_from_psnr([90, 0, -15]).tolist() == pytest.approx([1e-9, 1.0, 10**1.5])


def test_add_noise_has_variance_t():
    x = torch.zeros(2, 1, 64, 64)
    t = torch.tensor([1e-2, 4.0])
    y, z = noise.add_noise(x, t, torch.Generator().manual_seed(1))
    assert torch.allclose(y, noise.expand_t(t, x).sqrt() * z)
    assert y[0].var().item() == pytest.approx(1e-2, rel=0.1)
    assert y[1].var().item() == pytest.approx(4.0, rel=0.1)
