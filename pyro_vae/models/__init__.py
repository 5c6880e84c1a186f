"""Model/guide pairs, one file per model family, built from a :class:`~pyro_vae.config.ModelConfig`."""

from __future__ import annotations

from ..config import ModelConfig
from .cvae import ConditionalVAE
from .ssvae import SSVAE
from .vae import VAE

__all__ = ["SSVAE", "VAE", "ConditionalVAE", "build_model"]


def build_model(config: ModelConfig, x_dim: int = 784) -> VAE | ConditionalVAE | SSVAE:
    """The model named by ``config.model`` with its architecture and likelihood."""
    if config.model == "ssvae":
        return SSVAE(x_dim=x_dim, z_dim=config.z_dim, hidden_dim=config.hidden_dim)
    if config.model == "cvae":
        return ConditionalVAE(x_dim=x_dim, z_dim=config.z_dim, hidden_dim=config.hidden_dim)
    if config.model == "vae":
        return VAE(
            x_dim=x_dim,
            z_dim=config.z_dim,
            hidden_dim=config.hidden_dim,
            arch=config.arch,
            likelihood=config.likelihood,
            gaussian_scale=config.gaussian_scale,
        )
    raise ValueError(f"unknown model {config.model!r}; use vae, cvae or ssvae")
