"""pyro-vae: variational autoencoders written as Pyro models and guides, trained by SVI.

Bring any model/guide pair (see :mod:`pyro_vae.contract`): ``fit`` trains it, ``load_run``
rebuilds it from its run directory, ``log_likelihood`` and ``estimate_run`` score it.
"""

from pyro_vae.contract import ModelContractError, build_model, check_model, registered_models
from pyro_vae.data.datasets import Dataset, as_dataset, load_dataset
from pyro_vae.inference.ais import ais_log_likelihood, bdmc  # also registers the "ais" estimator
from pyro_vae.inference.enumeration import enumerated_negative_elbo
from pyro_vae.inference.estimators import ESTIMATORS, register_estimator
from pyro_vae.inference.evaluate import (active_units, dataset_elbo_terms, dataset_log_likelihood, elbo_terms,
                                         iwae_bounds, latent_means, log_importance_weights, log_likelihood,
                                         posterior_means)
from pyro_vae.models import SSVAE, VAE, ConditionalVAE
from pyro_vae.runs.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from pyro_vae.runs.run_dir import LoadedRun, estimate_run, load_run
from pyro_vae.training.plan import ELBOPlan, TrainingPlan
from pyro_vae.training.trainer import FitResult, TrainingDiverged, fit, fit_config

__version__ = "0.2.0"

__all__ = [
    "ESTIMATORS",
    "SSVAE",
    "ConditionalVAE",
    "DataConfig",
    "Dataset",
    "ELBOPlan",
    "FitResult",
    "LoadedRun",
    "ModelConfig",
    "ModelContractError",
    "RunConfig",
    "TrainConfig",
    "TrainingDiverged",
    "TrainingPlan",
    "VAE",
    "active_units",
    "ais_log_likelihood",
    "as_dataset",
    "bdmc",
    "build_model",
    "check_model",
    "dataset_elbo_terms",
    "dataset_log_likelihood",
    "elbo_terms",
    "enumerated_negative_elbo",
    "estimate_run",
    "fit",
    "fit_config",
    "iwae_bounds",
    "latent_means",
    "load_dataset",
    "load_run",
    "log_importance_weights",
    "log_likelihood",
    "posterior_means",
    "register_estimator",
    "registered_models",
]
