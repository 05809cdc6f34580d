import math

import numpy as np
import pytest
import pywt
import torch

from image_density.multiscale import wavelets


@pytest.mark.filterwarnings("ignore:Level value of")  # pywt: "boundary effects" at small sizes
@pytest.mark.parametrize("wavelet", ["haar", "db2", "db4", "coif1"])
@pytest.mark.parametrize("levels", [1, 3])
def test_coefficients_match_pywt_periodization(wavelet, levels):
    x = torch.randn(2, 3, 32, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_J, details = wavelets.decompose(x, levels, wavelet)
    ref = pywt.wavedec2(x.numpy(), wavelet, mode="periodization", level=levels, axes=(-2, -1))
    np.testing.assert_allclose(x_J.numpy(), ref[0], atol=1e-12)
    for j, d in enumerate(details):  # pywt lists the coarsest first
        bands = d.reshape(2, 3, 3, *d.shape[-2:]).numpy()  # channel-major (C, 3)
        for b, ref_band in enumerate(ref[levels - j]):
            np.testing.assert_allclose(bands[:, :, b], ref_band, atol=1e-12)


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
@pytest.mark.parametrize("normalization", ["orthonormal", "average"])
def test_perfect_reconstruction_float32(wavelet, normalization):
    x = torch.rand(4, 2, 16, 32, generator=torch.Generator().manual_seed(1))
    x_J, details = wavelets.decompose(x, 2, wavelet, normalization)
    assert x_J.shape == (4, 2, 4, 8) and [d.shape for d in details] == [(4, 6, 8, 16), (4, 6, 4, 8)]
    assert (wavelets.reconstruct(x_J, details, wavelet, normalization) - x).abs().max() < 1e-6


def test_orthonormal_preserves_norm_and_inverse_is_transpose():
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x_J, details = wavelets.decompose(x, 3, "db2")
    coeff_norm2 = x_J.pow(2).sum((1, 2, 3)) + sum(d.pow(2).sum((1, 2, 3)) for d in details)
    torch.testing.assert_close(coeff_norm2, x.pow(2).sum((1, 2, 3)), rtol=1e-12, atol=0)
    # <W x, c> = <x, W^T c> with W^T computed by autograd = reconstruct: the transform is orthogonal.
    x.requires_grad_(True)
    c = [torch.randn_like(t) for t in [x_J, *details]]
    y_J, ys = wavelets.decompose(x, 3, "db2")
    (grad,) = torch.autograd.grad(sum((a * b).sum() for a, b in zip([y_J, *ys], c, strict=True)), x)
    torch.testing.assert_close(grad, wavelets.reconstruct(c[0], c[1:], "db2"), rtol=1e-12, atol=1e-12)


def test_average_normalization_keeps_lowpass_as_local_mean():
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    x_J, _ = wavelets.decompose(x, 2, normalization="average")
    torch.testing.assert_close(x_J, torch.nn.functional.avg_pool2d(x, 4))
    lows, _ = wavelets.pyramid(x, 2)
    torch.testing.assert_close(lows[0], 2 * torch.nn.functional.avg_pool2d(x, 2))  # orthonormal: x 2


def test_log_det_jacobian_matches_dense_determinant():
    shape = (2, 4, 8)
    d = math.prod(shape)
    for normalization, expected_zero in [("orthonormal", True), ("average", False)]:
        x_J, details = wavelets.decompose(
            torch.eye(d, dtype=torch.float64).reshape(d, *shape), 2, normalization=normalization
        )
        w = torch.cat([x_J.flatten(1), *[t.flatten(1) for t in details]], dim=1)  # (d, d) = W^T
        logdet = torch.linalg.slogdet(w).logabsdet.item()
        assert logdet == pytest.approx(wavelets.log_det_jacobian(shape, 2, normalization), abs=1e-9)
        assert (logdet == pytest.approx(0.0, abs=1e-9)) == expected_zero


def test_bad_input_is_rejected_before_work():
    with pytest.raises(ValueError, match="not divisible by 2\\^levels"):
        wavelets.decompose(torch.zeros(1, 1, 12, 12), 3)
    with pytest.raises(ValueError, match="not orthogonal"):
        wavelets.decompose(torch.zeros(1, 1, 8, 8), 1, "bior2.2")
    with pytest.raises(ValueError, match="not a pywt discrete wavelet"):
        wavelets.decompose(torch.zeros(1, 1, 8, 8), 1, "nope")
    with pytest.raises(ValueError, match="normalization"):
        wavelets.dwt(torch.zeros(1, 1, 8, 8), normalization="unit")
    with pytest.raises(ValueError, match="\\(B, C, H, W\\)"):
        wavelets.dwt(torch.zeros(8, 8))
