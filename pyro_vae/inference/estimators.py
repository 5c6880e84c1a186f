"""Estimators of log p(x) registered by name: ``pyro-vae evaluate --estimator NAME`` and
:func:`pyro_vae.estimate_run` look them up here, so a new estimator is one function in its own module.

An estimator is called as ``estimator(model, images, labels, *, num_samples, chunk_size, batch_size,
progress)`` and returns per-datapoint tensors: ``log_likelihood`` and any bounds it has (``iwae_k``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pyro_vae.inference.evaluate import dataset_log_likelihood

Estimator = Callable[..., dict[str, torch.Tensor]]
ESTIMATORS: dict[str, Estimator] = {}
STANDARD_IWAE_KS = (1, 5, 50, 500, 5000)


def register_estimator(name: str) -> Callable[[Estimator], Estimator]:
    """Decorator: make an estimator available under ``name``."""

    def register(estimator: Estimator) -> Estimator:
        ESTIMATORS[name] = estimator
        return estimator

    return register


def get_estimator(name: str) -> Estimator:
    if name not in ESTIMATORS:
        raise ValueError(f"unknown estimator {name!r}; use one of: {', '.join(sorted(ESTIMATORS))}")
    return ESTIMATORS[name]


def iwae_ks_for(num_samples: int) -> list[int]:
    """The standard k of the IWAE bounds (1, 5, 50, 500, 5000) that divide K, and K itself."""
    return sorted({k for k in STANDARD_IWAE_KS if k <= num_samples and num_samples % k == 0} | {num_samples})


@register_estimator("is")
def importance_sampling(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, *, num_samples: int,
                        chunk_size: int = 500, batch_size: int = 100, progress: bool = False) -> dict[str, torch.Tensor]:
    """Importance sampling with the guide as proposal, K = ``num_samples``, and the IWAE bounds L_k
    from the same weights (Burda et al., 2016)."""
    return dataset_log_likelihood(model, images, labels, num_samples=num_samples, chunk_size=chunk_size,
                                  batch_size=batch_size, iwae_ks=iwae_ks_for(num_samples), progress=progress)
