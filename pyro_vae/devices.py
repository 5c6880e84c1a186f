"""Choosing the torch device a run asks for."""

from __future__ import annotations

import torch

from pyro_vae.runs.config import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when available; asking for CUDA without it is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but CUDA is not available here; use --device cpu or auto")
    if name != "cpu":
        raise ConfigError(f"--device {name!r} is not one of: auto, cpu, cuda")
    return torch.device(name)
