"""The identifier of one network of the multi-scale model, its folder name and its parser. Light on
purpose (no torch): the workflow builds its targets from it at parse time."""

from __future__ import annotations

import re
from dataclasses import dataclass

from image_density.config import ConfigError

Scale = str | int  # "lowpass", "flat" or j


def parse_scale(text: str) -> Scale:
    """The CLI's --scale: "lowpass", "flat" or an integer j."""
    if text in ("lowpass", "flat"):
        return text
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"--scale must be lowpass, flat or a scale index j, got {text!r}") from None


@dataclass(frozen=True)
class Net:
    """One network of the multi-scale model: `family` (denoiser | energy), `scale` ("lowpass",
    "flat" or j, 0 = finest) and `rf` (None for the low-pass). Its folder below
    <results>/models/multiscale/<dataset>/<family>/ is `folder`, its meta and MLflow name `name`."""

    family: str
    scale: Scale
    rf: int | None = None

    FOLDER = r"lowpass|flat-rf\d+|\d+-rf\d+"  # the folders `parse` reads (a Snakemake constraint)

    @property
    def folder(self) -> str:
        return "lowpass" if self.scale == "lowpass" else f"{self.scale}-rf{self.rf}"

    @property
    def name(self) -> str:  # e.g. "denoiser-lowpass", "denoiser-flat-rf9", "energy-0-rf9"
        return f"{self.family}-{self.folder}"

    @property
    def cli_args(self) -> str:
        """This network's options of `image-density train-scale`."""
        return f"--scale {self.scale}" + ("" if self.rf is None else f" --rf {self.rf}")

    @classmethod
    def parse(cls, family: str, folder: str) -> Net:
        """The network of folder `folder` (as `folder` writes it)."""
        if not re.fullmatch(cls.FOLDER, folder):
            raise ConfigError(f"{folder!r} is no multi-scale network folder (lowpass, flat-rfR or j-rfR)")
        if folder == "lowpass":
            return cls(family, "lowpass")
        scale, rf = folder.split("-rf")
        return cls(family, parse_scale(scale), int(rf))
