import pytest
import torch

from image_density.models.cnn import BFCNN, BFBatchNorm, BlindCNN, ConditionalCNN, kernel_sizes


def _train_bn_once(net, x, *args):
    net.train()
    net(x, *args)
    net.eval()


def gradient_support(net: torch.nn.Module, size: int = 33, channels: int = 1) -> int:
    """Side of the bounding box of the input pixels that the centre output pixel depends on."""
    x = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = net(x)
    (grad,) = torch.autograd.grad(out[0, :, size // 2, size // 2].sum(), x)
    rows, cols = torch.nonzero(grad.abs().sum(dim=(0, 1)), as_tuple=True)
    assert rows.max() - rows.min() == cols.max() - cols.min()
    return int(rows.max() - rows.min() + 1)


@pytest.mark.parametrize("rf", [5, 9, 13])
def test_receptive_field_from_gradient_support(rf):
    torch.manual_seed(0)
    net = BFCNN(1, 1, layers=7, width=16, rf=rf)
    _train_bn_once(net, torch.randn(4, 1, 16, 16))  # eval mode: batch statistics would couple pixels
    assert net.rf == rf
    assert gradient_support(net) == rf


def test_kernel_sizes_spread_and_release_defaults():
    assert kernel_sizes(21, 43) == [3] * 21
    assert kernel_sizes(21, 5) == [3] + [1] * 19 + [3]
    assert sum(k == 3 for k in kernel_sizes(21, 13)) == 6
    assert kernel_sizes(20, None) == [3] * 20  # the global low-pass denoiser, RF 41
    for bad in [4, 45, 0]:
        with pytest.raises(ValueError, match="rf must be odd"):
            kernel_sizes(21, bad)


def test_bias_free_network_is_homogeneous_in_eval_mode():
    torch.manual_seed(1)
    net = BlindCNN(channels=2, layers=5, width=8, rf=7)
    y = torch.rand(3, 2, 12, 12)
    _train_bn_once(net, y)
    for a in [0.1, 3.0]:
        torch.testing.assert_close(net(a * y), a * net(y), rtol=1e-5, atol=1e-6)
    assert not any("bias" in name for name, _ in net.named_parameters())
    torch.testing.assert_close(net.denoise(y, t=torch.ones(3)), y - net(y))  # t is ignored


def test_conditional_cnn_shapes_and_face():
    torch.manual_seed(2)
    net = ConditionalCNN(channels=3, layers=4, width=8, rf=5)
    d, x_j = torch.randn(2, 9, 8, 8), torch.rand(2, 3, 8, 8)
    noise_hat = net(d, x_j)
    assert noise_hat.shape == (2, 9, 8, 8)
    torch.testing.assert_close(net.denoise(d, x_j), d - noise_hat)
    assert net.net.convs[0].in_channels == 12 and net.rf == 5


def test_batch_norm_tracks_scale_without_centring():
    bn = BFBatchNorm(4)
    with torch.no_grad():
        bn.gamma.fill_(1.0)
    x = 5.0 + 2.0 * torch.randn(64, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    out = bn(x)
    # divided by the batch std (about 2), not centred: the mean of 5 survives as about 5 / 2
    assert out.mean().item() == pytest.approx(2.5, rel=0.05)
    assert bn.running_sd.mean().item() == pytest.approx(0.9 + 0.1 * 2.0, rel=0.02)


def test_registry_builds_the_paper_networks():
    from image_density.config import CNNSpec
    from image_density.models import build_model
    from image_density.models.cnn import cnn_model_spec

    cnn = CNNSpec(channels=8, layers_lowpass=4, layers_conditional=5)
    low = build_model(cnn_model_spec("lowpass", 1, cnn))
    cond = build_model(cnn_model_spec("conditional", 1, cnn, rf=7))
    flat = build_model(cnn_model_spec("flat", 1, cnn, rf=7))
    assert (type(low), low.rf) == (BlindCNN, 9)
    assert (type(cond), cond.rf, type(flat), flat.rf) == (ConditionalCNN, 7, BlindCNN, 7)
    with pytest.raises(ValueError, match="receptive field"):
        cnn_model_spec("conditional", 1, cnn)
