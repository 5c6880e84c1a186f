"""pyro-vae: variational autoencoders written as Pyro models and guides, trained by SVI."""

from pyro_vae.runs.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from pyro_vae.data.datasets import Dataset, load_dataset
from pyro_vae.inference.evaluate import (active_units, dataset_elbo_terms, dataset_log_likelihood, elbo_terms, iwae_bounds,
                       log_importance_weights, log_likelihood)
from pyro_vae.models import SSVAE, VAE, ConditionalVAE, build_model
from pyro_vae.runs.run_dir import estimate_run, load_run
from pyro_vae.training.trainer import FitResult, fit

__version__ = "0.1.0"

__all__ = [
    "SSVAE",
    "ConditionalVAE",
    "VAE",
    "DataConfig",
    "Dataset",
    "FitResult",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "active_units",
    "build_model",
    "dataset_elbo_terms",
    "dataset_log_likelihood",
    "elbo_terms",
    "estimate_run",
    "fit",
    "iwae_bounds",
    "load_dataset",
    "load_run",
    "log_importance_weights",
    "log_likelihood",
]
