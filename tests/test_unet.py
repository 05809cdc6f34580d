"""The bias-free UNet of paper 1: shapes, no biases, the scale-preserving norm, equivariance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from image_density.models.unet import ScaleNorm, TimeEmbedding, UNet


def _randomize(net: UNet, std: float = 0.2) -> UNet:
    """Non-zero last conv and t-conditioning (both start at zero), so f depends on y and t."""
    nn.init.normal_(net.out.weight, std=std)
    for m in net.modules():
        if isinstance(m, ScaleNorm):
            nn.init.normal_(m.cond.weight, std=std)
    return net


def _tiny(channels: int = 1, **kw) -> UNet:
    return _randomize(
        UNet(channels, widths=[4, 8], mid_width=8, convs_per_block=2, emb_features=4, emb_dim=8, **kw)
    )


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 16])
def test_output_shape(channels, size):
    net = _tiny(channels)
    y = torch.rand(2, channels, size, size)
    f = net(y, torch.tensor([1e-9, 1e3]))
    assert f.shape == y.shape and f.is_contiguous() and torch.isfinite(f).all()


def test_three_scales_accepts_size_8():
    net = UNet(3, widths=[4, 4, 4], mid_width=8, convs_per_block=1, emb_features=4, emb_dim=8)
    assert net(torch.rand(1, 3, 8, 8), torch.ones(1)).shape == (1, 3, 8, 8)


def test_bad_inputs_are_named():
    net = _tiny(1)
    with pytest.raises(ValueError, match="divisible by 4"):
        net(torch.rand(1, 1, 10, 10), torch.ones(1))
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        net(torch.rand(1, 3, 8, 8), torch.ones(1))
    with pytest.raises(ValueError, match="one noise level per image"):
        net(torch.rand(2, 1, 8, 8), torch.ones(1))


def test_no_biases_anywhere():
    net = UNet(3, widths=[8, 16, 32], mid_width=64)
    assert not [n for n, _ in net.named_parameters() if "bias" in n]
    layers = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear)]
    assert layers and all(m.bias is None for m in layers)


def _release(channels: int) -> UNet:
    return UNet(channels, layout="release", embedding="t", norm="release", init="release")


@pytest.mark.parametrize(("channels", "count"), [(1, 8_647_552), (3, 8_649_856)])
def test_release_network_has_the_release_parameter_count(channels, count):
    # METHOD.md, read off the release's networks/unet.py and its training log
    assert sum(p.numel() for p in _release(channels).parameters()) == count


def _layers(block) -> list[tuple]:
    """(kind, in, out, kernel, stride, normed) of each layer of a block."""
    kinds = [("up" if isinstance(c, nn.ConvTranspose2d) else "conv", c.in_channels, c.out_channels,
              c.kernel_size[0], c.stride[0]) for c in block.convs]  # fmt: skip
    return [(*k, i < len(block.norms)) for i, k in enumerate(kinds)]


def test_release_network_has_the_release_block_structure():
    net = _release(1)
    down = lambda i, o: ("conv", i, o, 2, 2, True)  # noqa: E731
    conv = lambda i, o: ("conv", i, o, 3, 1, True)  # noqa: E731
    up = lambda i, o: ("up", i, o, 2, 2, True)  # noqa: E731
    assert [_layers(b) for b in net.enc] == [
        [conv(1, 64), conv(64, 64), conv(64, 64)],
        [down(64, 128), conv(128, 128), conv(128, 128)],
        [down(128, 256), conv(256, 256), conv(256, 256)],
    ]
    assert _layers(net.mid) == [down(256, 512), conv(512, 512), up(512, 256)]
    assert [_layers(b) for b in net.dec] == [
        [conv(512, 256), conv(256, 256), up(256, 128)],
        [conv(256, 128), conv(128, 128), up(128, 64)],
        [conv(128, 64), conv(64, 64), ("conv", 64, 1, 3, 1, False)],  # the last conv: no norm, no GELU
    ]
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert len(convs) == 21 and all(c.bias is None for c in convs)
    # the t-conditioning Linears have biases, as the release's (gains only: f stays homogeneous in y)
    assert all(m.bias is not None for m in net.modules() if isinstance(m, nn.Linear))
    assert not hasattr(net, "down") and net.last_conv is net.dec[-1].convs[-1]


def test_release_network_is_a_working_unet():
    net = _release(3).double()
    y, t = torch.rand(2, 3, 16, 16, dtype=torch.float64), torch.tensor([1e-2, 10.0], dtype=torch.float64)
    f = net(y, t)
    assert f.shape == y.shape
    # init "release" starts t-dependent and non-zero (PyTorch's default init, no zeroed layer)
    assert f.abs().max() > 0 and not torch.allclose(net(y, t.flip(0)), f, rtol=1e-3, atol=0)
    # the skips and the coarse path both reach the output: a pixel's change spreads beyond its 3x3
    # neighbourhood at full resolution
    y2 = y.clone()
    y2[:, :, 0, 0] += 1
    assert (net(y2, t) - f)[:, :, 8:, 8:].abs().max() > 1e-3 * f.abs().max()


def test_the_separate_layout_is_the_first_versions_network():
    net = UNet(1)  # the keyword defaults rebuild the specs written before the options existed
    assert sum(p.numel() for p in net.parameters()) == 13_112_576
    assert len([m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]) == 28


@pytest.mark.parametrize(
    ("key", "value"), [("layout", "unet3"), ("embedding", "sigma"), ("norm", "batch"), ("init", "zeros")]
)
def test_an_unknown_option_is_named(key, value):
    with pytest.raises(ValueError, match=f"unet.{key}"):
        UNet(1, widths=[4], mid_width=4, convs_per_block=2, **{key: value})


def test_release_embedding_is_sinusoids_of_t_itself():
    emb = TimeEmbedding(32, 8, embedding="t", bias=True)
    seen = []
    emb.mlp[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    t = torch.tensor([0.0, 1e-3, 0.5, 30.0])
    emb(t)
    omega = 0.01 ** (torch.arange(32) / 31)  # 1 ... 0.01, log-spaced (METHOD.md)
    arg = t[:, None] * omega
    torch.testing.assert_close(seen[0], torch.cat([arg.cos(), arg.sin()], 1))
    # hence nearly constant below t ~ 1e-2, where the log t embedding still moves
    e = emb(torch.tensor([0.0, 1e-4]))
    assert (e[0] - e[1]).abs().max() < 1e-4
    e_log = TimeEmbedding(32, 8)(torch.tensor([1e-6, 1e-4]))
    assert (e_log[0] - e_log[1]).abs().max() > 1e-3


def test_release_norm_is_the_release_formula():
    torch.manual_seed(0)
    norm = ScaleNorm(4, emb_dim=3, norm="release", bias=True).double()
    h = (
        torch.randn(2, 4, 5, 5, dtype=torch.float64)
        * torch.tensor([1e-3, 0.1, 1.0, 5.0])[:, None, None].double()
    )
    emb = torch.randn(2, 3, dtype=torch.float64)
    hc = h - h.mean(dim=(2, 3), keepdim=True)
    v = (hc**2).mean(dim=(2, 3), keepdim=True)
    a = v.mean(dim=1, keepdim=True)
    gain = norm.weight[:, None, None] * (1 + norm.cond(emb))[:, :, None, None]
    expected = hc * torch.sqrt(a / (v + 1e-5) + 1e-5) * gain
    torch.testing.assert_close(norm(h, emb), expected)
    # unlike the homogeneous norm, eps is absolute: at a tiny input scale the norm is not linear in h
    tiny = 1e-4 * h
    assert not torch.allclose(norm(tiny, emb), 1e-4 * norm(h, emb), rtol=1e-2)
    homog = ScaleNorm(4, emb_dim=3).double()
    homog.load_state_dict({k: v for k, v in norm.state_dict().items() if k != "cond.bias"})
    torch.testing.assert_close(homog(tiny, emb), 1e-4 * homog(h, emb))


def test_norm_keeps_the_global_scale():
    torch.manual_seed(0)
    norm = ScaleNorm(5, emb_dim=3).double()
    scales = torch.tensor([0.1, 1.0, 3.0, 10.0, 0.5], dtype=torch.float64)[:, None, None]
    h = torch.randn(4, 5, 6, 6, dtype=torch.float64) * scales + 2.0
    emb = torch.randn(4, 3, dtype=torch.float64)
    out = norm(h, emb)
    var_in = h.var(dim=(2, 3), unbiased=False)  # (B, C)
    var_out = out.var(dim=(2, 3), unbiased=False)
    avg = var_in.mean(1, keepdim=True)
    # every channel centred and brought to the average channel variance of its image; eps (relative
    # to that average) only damps channels far below it: var_out = var / (var / avg + eps)
    torch.testing.assert_close(out.mean(dim=(2, 3)), torch.zeros_like(var_in), atol=1e-12, rtol=0)
    torch.testing.assert_close(var_out, var_in / (var_in / avg + norm.eps))
    assert ((var_out / avg - 1).abs()[:, 1:] < 2e-3).all()  # all channels but the 0.1-scaled one
    # homogeneous of degree 1: no absolute scale anywhere
    torch.testing.assert_close(norm(1e-6 * h, emb), 1e-6 * out, rtol=1e-10, atol=0)
    torch.testing.assert_close(norm(1e6 * h, emb), 1e6 * out, rtol=1e-10, atol=0)


def test_norm_conditioning_is_multiplicative():
    norm = ScaleNorm(2, emb_dim=1)
    nn.init.constant_(norm.cond.weight, 1.0)
    h = torch.randn(1, 2, 4, 4)
    base = norm(h, torch.zeros(1, 1))
    torch.testing.assert_close(norm(h, torch.full((1, 1), 2.0)), 3.0 * base)  # x (1 + 2)
    assert norm(torch.zeros(1, 2, 4, 4), torch.ones(1, 1)).abs().max() == 0  # no additive shift


def test_embedding_is_finite_at_t_zero_and_frozen_below_the_floor():
    emb = TimeEmbedding(8, 16)
    e = emb(torch.tensor([0.0, 1e-12, 1e-9, 1e-3, 1e3]))
    assert torch.isfinite(e).all()
    torch.testing.assert_close(e[0], e[2])
    torch.testing.assert_close(e[1], e[2])
    assert not torch.allclose(e[2], e[3])


def test_images_are_independent_in_a_batch():
    net = _tiny(3)
    y, t = torch.rand(4, 3, 8, 8), torch.tensor([1e-6, 1e-2, 1.0, 1e2])
    perm = torch.tensor([2, 0, 3, 1])
    torch.testing.assert_close(net(y[perm], t[perm]), net(y, t)[perm])
    torch.testing.assert_close(net(y[:1], t[:1]), net(y, t)[:1], rtol=1e-5, atol=1e-6)


def test_circular_padding_is_shift_equivariant():
    net = _tiny(1, padding_mode="circular").double()
    y, t = torch.rand(2, 1, 16, 16, dtype=torch.float64), torch.tensor([1e-2, 1.0], dtype=torch.float64)
    shift = (4, 8)  # multiples of 2^2
    f = net(y, t)
    torch.testing.assert_close(net(torch.roll(y, shift, (2, 3)), t), torch.roll(f, shift, (2, 3)))
    assert f.abs().max() > 1e-3


def test_gradients_are_contiguous():
    net = _tiny(3)
    y = torch.rand(2, 3, 8, 8, requires_grad=True)
    (net(y, torch.tensor([0.1, 1.0])) ** 2).sum().backward()
    assert y.grad.is_contiguous()
    assert all(p.grad is None or p.grad.is_contiguous() for p in net.parameters())


@pytest.mark.parametrize("key", ["layout", "embedding", "norm", "init"])
def test_the_config_names_an_unknown_option(key):
    from pathlib import Path

    from image_density.config import ConfigError, load_config, validate_config

    raw = load_config(Path(__file__).parents[1] / "params" / "paper.yaml").model_dump(mode="json")
    raw["energy"]["unet"][key] = "nonsense"
    with pytest.raises(ConfigError, match=rf"energy\.unet\.{key} = 'nonsense'"):
        validate_config(raw)
