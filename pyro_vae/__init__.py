"""pyro-vae: variational autoencoders written as Pyro models and guides, trained by SVI."""

from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .data import Dataset, load_dataset
from .evaluate import dataset_elbo_terms, elbo_terms
from .models import VAE, build_model
from .train import FitResult, fit

__version__ = "0.1.0"

__all__ = [
    "VAE",
    "DataConfig",
    "Dataset",
    "FitResult",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "build_model",
    "dataset_elbo_terms",
    "elbo_terms",
    "fit",
    "load_dataset",
]
