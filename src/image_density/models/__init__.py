"""Networks and the registry that rebuilds them from a plain JSON-able spec.

A spec is {"arch": name, **kwargs}; checkpoints store it, so `build_model(spec)` gives back the same
architecture. A module adds an arch with `@register("name")` on a builder function; import that
module at the bottom of this file so the registration runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from image_density.config import UNetSpec

ARCHS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in ARCHS:
            raise ValueError(f"model arch {name!r} registered twice")
        ARCHS[name] = builder
        return builder

    return add


def build_model(spec: dict[str, Any]) -> nn.Module:
    """{"arch": name, **kwargs} -> a freshly initialized model."""
    if not isinstance(spec, dict) or "arch" not in spec:
        raise ValueError(f"a model spec must be a dict with an 'arch' key, got {spec!r}")
    kwargs = dict(spec)
    arch = kwargs.pop("arch")
    if arch not in ARCHS:
        raise ValueError(f"unknown model arch {arch!r} (known: {sorted(ARCHS)})")
    try:
        return ARCHS[arch](**kwargs)
    except TypeError as err:
        raise ValueError(f"model spec {spec!r} does not fit arch {arch!r}: {err}") from None


from image_density.models import cnn, local_energy  # noqa: E402, F401  (register the CNN archs)
from image_density.models.energy import DenoiserModel, EnergyModel  # noqa: E402
from image_density.models.gaussian import GaussianEnergy  # noqa: E402
from image_density.models.unet import UNet  # noqa: E402


@register("energy_unet")
def _energy_unet(
    channels: int, energy_form: str = "pure", data_mean=None, data_var=None, **unet_kwargs
) -> EnergyModel:
    """U(y, t) = 1/2 <y, UNet(y, t)> (+ b(t)) (+ U_G(y, t))."""
    return EnergyModel(UNet(channels, **unet_kwargs), energy_form, data_mean, data_var)


@register("denoiser_unet")
def _denoiser_unet(channels: int, **unet_kwargs) -> DenoiserModel:
    """x_hat = y - t UNet(y, t)."""
    return DenoiserModel(UNet(channels, **unet_kwargs))


# The UNet's keyword defaults: what a spec written before these options existed was built with.
_UNET_FIRST = {
    k: p.default
    for k, p in inspect.signature(UNet).parameters.items()
    if k in ("layout", "embedding", "norm")
}


def network_label(spec: dict[str, Any]) -> str:
    """What a table row says produced it: 'unet-release/t/release' (layout/embedding/norm) for the
    UNets, the arch (and its receptive field) otherwise."""
    arch = spec.get("arch", "?")
    if arch in ("energy_unet", "denoiser_unet"):
        return "unet-{layout}/{embedding}/{norm}".format(**{**_UNET_FIRST, **spec})
    rf = spec.get("rf")
    return f"{arch}-rf{rf}" if rf is not None else arch


def unet_model_spec(
    arch: str, channels: int, unet: UNetSpec, data_stats: dict[str, list[float]] | None = None
) -> dict[str, Any]:
    """The spec of an "energy_unet" / "denoiser_unet" from a config.UNetSpec (plain JSON types).
    data_stats: energy.gaussian_stats of the training images (for a multi-scale low-pass energy: of
    their x_J), stored by the "gaussian" energy form; that form only."""
    kwargs = unet.model_dump()
    if arch == "denoiser_unet":
        kwargs.pop("energy_form")
    elif arch != "energy_unet":
        raise ValueError(f"unet_model_spec builds 'energy_unet' or 'denoiser_unet', not {arch!r}")
    elif unet.energy_form == "gaussian":
        if data_stats is None:
            raise ValueError("energy_form 'gaussian' needs the training images' mean and variance")
        kwargs.update(data_stats)
    return {"arch": arch, "channels": channels, **kwargs}


__all__ = [
    "ARCHS",
    "DenoiserModel",
    "EnergyModel",
    "GaussianEnergy",
    "UNet",
    "build_model",
    "network_label",
    "register",
    "unet_model_spec",
]
