"""Model/guide pairs, one file per model family, built from a :class:`~pyro_vae.config.ModelConfig`."""

from __future__ import annotations

import torch

from pyro_vae.runs.config import ModelConfig
from pyro_vae.models.cvae import ConditionalVAE
from pyro_vae.models.ssvae import SSVAE
from pyro_vae.models.vae import VAE

__all__ = ["SSVAE", "VAE", "ConditionalVAE", "build_model", "latent_means"]


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


def latent_means(model: VAE | ConditionalVAE, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """E_q[z|x] of each image: a CVAE needs the labels ``y``; M2 uses its classifier's label without them."""
    if isinstance(model, SSVAE):
        return model.encode(x, y)
    if isinstance(model, ConditionalVAE):
        if y is None:
            raise ValueError(f"a {type(model).__name__} encodes x given its label; pass the images' labels y")
        return model.encode(x, y)
    return model.encode(x)
