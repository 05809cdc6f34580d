"""Normalization and likelihoods of energy models (METHOD.md, paper 1 "Normalization and NLL").

Everything here is in nats; bits/dim and dB/dim only through units.py.
- log Z at t_max: there p_t is Gaussian to high accuracy, so E[-log p_t] is a Gaussian entropy H and
  log Z = H - E_{x,z}[U(x + sqrt(t_max) z, t_max)].
- -log p(x) = U(x, 0) + log Z: one forward pass per image.
- ode_nll: a second, independent NLL of the same model from its probability-flow ODE.
- transport_integrand: where along t the NLL at t_min is carried from log Z at t_max.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import torch
from torchdiffeq import odeint

from image_density.noise import add_noise

Data = torch.Tensor | Iterable[torch.Tensor]


def _dtype_device(model) -> tuple[torch.dtype, torch.device]:
    for p in (*model.parameters(), *model.buffers()):
        if p.is_floating_point():
            return p.dtype, p.device
    return torch.get_default_dtype(), torch.device("cpu")


def _batches(x: Data, batch_size: int, model) -> Iterator[torch.Tensor]:
    """Batches of images (B, ...) on the model's device and dtype."""
    dtype, device = _dtype_device(model)
    for xb in x.split(batch_size) if isinstance(x, torch.Tensor) else x:
        yield xb.to(device=device, dtype=dtype)


def gaussian_entropy_nats(eigenvalues: torch.Tensor) -> float:
    """Differential entropy of a Gaussian with covariance eigenvalues lambda: 1/2 sum log(2 pi e lambda)."""
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    return 0.5 * torch.log(2 * math.pi * math.e * lam).sum().item()


def data_covariance_eigenvalues(x: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (d,) of the empirical covariance of images x (N, ...), float64, descending.
    With N <= d, from the singular values of the centred data (cheaper; the rest are zeros)."""
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 images for a covariance, got {n}")
    xc = x.flatten(1).double()
    d = xc.shape[1]
    xc = xc - xc.mean(0)
    if n <= d:
        lam = torch.linalg.svdvals(xc).square() / (n - 1)
        return torch.cat([lam, lam.new_zeros(d - lam.numel())])
    lam = torch.linalg.eigvalsh(xc.T @ xc / (n - 1)).clamp_min(0)
    return lam.flip(0)


def _tmax_energy(model, xb: torch.Tensor, t_max: float, draws: int, generator) -> torch.Tensor:
    """Per image (B,) float64: mean over `draws` of U(x + sqrt(t_max) z, t_max) - 1/2 ||z||^2 + d/2.

    The control variate 1/2 ||z||^2 (the energy of N(x, t_max I), whose mean is exactly d/2) has a far
    smaller variance than U at large t_max."""
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    t = torch.full((xb.shape[0],), float(t_max), dtype=xb.dtype, device=xb.device)
    total = torch.zeros(xb.shape[0], dtype=torch.float64)
    with torch.inference_mode():
        for _ in range(draws):
            y, z = add_noise(xb, t, generator)
            total += (model.energy(y, t) - 0.5 * z.flatten(1).square().sum(1)).double().cpu()
    return total / draws + 0.5 * xb[0].numel()


def _tmax_entropy(d: int, t_max: float, eigenvalues: torch.Tensor | None) -> float:
    """(d/2) log(2 pi e t_max); with covariance eigenvalues: 1/2 sum_k log(2 pi e (t_max + lambda_k))."""
    if eigenvalues is None:
        return 0.5 * d * math.log(2 * math.pi * math.e * t_max)
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64).flatten()
    if lam.numel() != d:
        raise ValueError(f"{lam.numel()} covariance eigenvalues for images of dimension d = {d}")
    return gaussian_entropy_nats(t_max + lam)


def log_z(
    model,
    x_batches_or_tensor: Data,
    t_max: float,
    draws: int,
    generator: torch.Generator | None = None,
    eigenvalues: torch.Tensor | None = None,
    batch_size: int = 64,
) -> float:
    """log Z (nats) = H - E[U(x + sqrt(t_max) z, t_max)] over the images and `draws` noise draws each.

    H = (d/2) log(2 pi e t_max), or with the data covariance eigenvalues lambda_k (d,) or (C, H, W) the
    refinement 1/2 sum_k log(2 pi e (t_max + lambda_k)); E[U] with a control variate (`_tmax_energy`).
    """
    total, count, d = 0.0, 0, None
    for xb in _batches(x_batches_or_tensor, batch_size, model):
        d = xb[0].numel()
        total += _tmax_energy(model, xb, t_max, draws, generator).sum().item()
        count += xb.shape[0]
    if count == 0:
        raise ValueError("log_z got no images")
    return _tmax_entropy(d, t_max, eigenvalues) - total / count


def log_z_per_image(
    model, x: torch.Tensor, t_max: float, draws: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """log Z of each image's own density (B,) float64 CPU: H - mean over draws U(x + sqrt(t_max) z, t_max),
    one batch x (B, ...). For a conditional energy bound to one conditioning image per row
    (models/local_energy.py): at t_max, p_t(. | x_j) is Gaussian with an entropy H that does not depend
    on x_j, and x's own d stands in for a sample of p(d | x_j) (its weight, ~ lambda / t_max, vanishes),
    so the x_j-dependent constant that dual score matching leaves free in U is measured, image by image."""
    dtype, device = _dtype_device(model)
    x = x.to(device=device, dtype=dtype)
    return _tmax_entropy(x[0].numel(), t_max, None) - _tmax_energy(model, x, t_max, draws, generator)


def compiled_energy(model) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """model.energy through torch.compile (inductor), for inference: the elementwise passes of each
    norm + GELU fuse into a few loops. The weights are graph inputs, not frozen constants, so the
    compiled function follows the model as it trains. Same U to float32 rounding
    (tests/test_likelihood.py); compiling costs tens of seconds, once per input shape."""
    return torch.compile(model.energy, dynamic=False)


def nll(
    model, x: Data, log_z: float, t: float = 0.0, batch_size: int = 64, compile: bool = False
) -> torch.Tensor:
    """-log p(x) = U(x, t) + log Z in nats per image, (N,) float64 on the CPU.

    t stands in for 0: exact models take t = 0; a learned model was only trained on [t_min, t_max], so
    evaluate it at its training t_min (U(x, t_min) = -log p_{t_min}(x) - log Z, ~ -log p(x) when
    t_min is far below the data's finest variance). compile: U through `compiled_energy` (faster for
    many images; a last, partial batch is padded to the first batch's size: one shape is compiled)."""
    energy = compiled_energy(model) if compile else model.energy
    out, full = [], None
    with torch.inference_mode():
        for xb in _batches(x, batch_size, model):
            b = xb.shape[0]
            full = full or b
            if compile and b < full:  # U of an image does not depend on the others in its batch
                xb = torch.cat([xb, xb.new_zeros(full - b, *xb.shape[1:])])
            tb = torch.full((xb.shape[0],), float(t), dtype=xb.dtype, device=xb.device)
            out.append(energy(xb, tb)[:b].double().cpu() + log_z)
    return torch.cat(out)


def _divergence(s: torch.Tensor, y: torch.Tensor, trace: str, probes: torch.Tensor | None) -> torch.Tensor:
    """div_y s(y) per image (B,): exact (d vector-Jacobian products) or Hutchinson (fixed probes)."""
    if trace == "exact":
        s_flat = s.flatten(1)
        div = torch.zeros(s.shape[0], dtype=s.dtype, device=s.device)
        for i in range(s_flat.shape[1]):
            (g,) = torch.autograd.grad(s_flat[:, i].sum(), y, retain_graph=True)
            div = div + g.flatten(1)[:, i]
        return div
    div = 0.0
    for eps in probes:  # eps (B, ...)
        (g,) = torch.autograd.grad(s, y, grad_outputs=eps, retain_graph=True)
        div = div + (g * eps).flatten(1).sum(1)
    return div / probes.shape[0]


def ode_nll(
    model,
    x: torch.Tensor,
    t_min: float,
    t_max: float,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    trace: Literal["exact", "hutchinson"] = "exact",
    generator: torch.Generator | None = None,
    prior_mean: float | torch.Tensor = 0.0,
    prior_var: float | torch.Tensor = 0.0,
    probes: int = 1,
    method: str = "dopri5",
) -> torch.Tensor:
    """-log p_{t_min}(x) in nats per image (B,) float64 CPU, from the model's probability-flow ODE.

    y_t = x + sqrt(t) z is the heat flow dy = dW, whose probability-flow ODE is
        dy/dt = -1/2 grad log p_t(y) = +1/2 grad_y U(y, t),
    and along it d log p_t(y_t)/dt = -div(dy/dt) = -1/2 Laplacian U. Integrating from y(t_min) = x:
        -log p_{t_min}(x) = -log p_{t_max}(y(t_max)) - 1/2 int_{t_min}^{t_max} Laplacian U(y_t, t) dt,
    with the prior p_{t_max} = N(prior_mean, (t_max + prior_var) I) (prior_var: the data's pixel
    variance; scalars or tensors broadcastable to one image). The ODE runs in s = log t (dt = t ds),
    so steps can grow with t. Independent of log Z: U's t-dependence is never used, only grad_y U.
    """
    if trace not in ("exact", "hutchinson"):
        raise ValueError(f"trace must be 'exact' or 'hutchinson', got {trace!r}")
    if not 0 < t_min < t_max:
        raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min}, t_max={t_max}")
    dtype, device = _dtype_device(model)
    x = x.to(device=device, dtype=dtype)
    b = x.shape[0]
    eps = None
    if trace == "hutchinson":  # Rademacher probes, fixed along the trajectory
        eps = torch.randint(0, 2, (probes, *x.shape), generator=generator).to(x) * 2 - 1

    def velocity(s: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        y, _ = state
        t = s.exp().expand(b).to(dtype)
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            score = model.score(y, t, create_graph=True)
            div = _divergence(score, y, trace, eps)
        half_t = 0.5 * t
        return (half_t.view(-1, *[1] * (x.dim() - 1)) * score.detach(), half_t * div.detach())

    s_span = torch.tensor([math.log(t_min), math.log(t_max)], dtype=dtype, device=device)
    ell0 = torch.zeros(b, dtype=dtype, device=device)
    ys, ells = odeint(velocity, (x, ell0), s_span, rtol=rtol, atol=atol, method=method)
    y_T, ell = ys[-1].double(), ells[-1].double()
    var = t_max + torch.as_tensor(prior_var, dtype=torch.float64, device=device)
    mean = torch.as_tensor(prior_mean, dtype=torch.float64, device=device)
    prior_nll = (0.5 * (y_T - mean).square() / var + 0.5 * torch.log(2 * math.pi * var)).flatten(1).sum(1)
    return (prior_nll - ell).cpu()


def transport_integrand(
    model, x: torch.Tensor, t_grid: torch.Tensor, probes: int = 4, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b), each (K,) float64: at each t_k of t_grid, over images x (B, ...) and y = x + sqrt(t) z,
        a = (t/d) E[dU/dt (y, t)],   b = (t / 2d) E[Laplacian_y U (y, t)]   (Hutchinson, Rademacher probes).
    E_z[U(x + sqrt(t) z, t)] moves with t by E[dU/dt] + 1/2 E[Laplacian U] (heat equation), so
        int_{log t_min}^{log t_max} (a + b) dlog t = (E[U(y, t_max)] - U(x, t_min)) / d,
    the per-dimension path by which log Z at t_max becomes -log p(x) = U(x, t_min) + log Z. Against an
    exact model on the same draws (same seed), a - a_exact and b - b_exact show at which noise levels a
    learned energy's NLL error accumulates: its time score, or the divergence of its score."""
    dtype, device = _dtype_device(model)
    x = x.to(device=device, dtype=dtype)
    d = x[0].numel()
    a, b = [], []
    for t_val in t_grid.tolist():
        t = torch.full((x.shape[0],), t_val, dtype=dtype, device=device)
        # drawn in float64 on the CPU whatever the model: the same seed gives two models the same draws
        z = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x)
        eps = torch.randint(0, 2, (probes, *x.shape), generator=generator).to(x) * 2 - 1
        with torch.enable_grad():
            y = (x + math.sqrt(t_val) * z).requires_grad_(True)
            s_y, u_t = model.score_and_time_score(y, t, create_graph=True)
            lap = _divergence(s_y, y, "hutchinson", eps)
        a.append(t_val / d * u_t.detach().double().mean().item())
        b.append(t_val / (2 * d) * lap.detach().double().mean().item())
    return torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
