"""The model contract: what the toolkit asks of a model/guide pair, and how a model is named and rebuilt.

A model is any ``torch.nn.Module`` (or ``PyroModule``) with two methods of the same signature::

    model(x, y=None)    # p(z) and p(x|z): observed site(s) with obs=x, latents, all inside
    guide(x, y=None)    # q(z|x): the same latent sites; pyro.plate("data", x.shape[0]) at dim -1

Everything else is optional and only switches features on (see :mod:`pyro_vae.models`). A model
is named by an import path ``"package.module:Class"`` plus keyword arguments, or by a registered
name: the built-ins below, and names that installed packages add through the entry-point group
``pyro_vae.models`` (``name = "package.module:Class"``). Runs record the import path and the
arguments, so a run directory rebuilds its model without the code that trained it.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import torch
from torch import nn

from pyro_vae.runs.config import ConfigError, ModelConfig

BUILTIN_MODELS = {
    "vae": "pyro_vae.models.vae:VAE",
    "cvae": "pyro_vae.models.cvae:ConditionalVAE",
    "ssvae": "pyro_vae.models.ssvae:SSVAE",
    "hvae": "pyro_vae.models.hvae:TwoLayerVAE",
    "m1m2": "pyro_vae.models.m1m2:M1M2",
}
ENTRY_POINT_GROUP = "pyro_vae.models"
SPEC_ATTRIBUTE = "pyro_vae_spec"


class ModelContractError(ConfigError):
    """A model cannot be imported, built or used; the message names the model and the fix."""


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a model: an import path and the keyword arguments of its class
    (``args`` is None where the model was handed over already built)."""

    target: str
    args: dict[str, Any] | None


def registered_models() -> dict[str, str]:
    """Model names and their import paths: the built-ins, then those of installed entry points."""
    names = dict(BUILTIN_MODELS)
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        names.setdefault(entry_point.name, entry_point.value)
    return names


def resolve_target(name: str) -> str:
    """The import path ``module:Class`` of a registered name; an import path is returned as it is."""
    if ":" in name:
        return name
    names = registered_models()
    if name not in names:
        raise ModelContractError(f"unknown model {name!r}: use one of {', '.join(names)} or an import path "
                                 "package.module:Class")
    return names[name]


def import_model_class(target: str) -> type:
    """The class an import path ``module:Class`` (or a registered name) names; one-line errors."""
    path = resolve_target(target)
    module_name, _, qualname = path.partition(":")
    if not module_name or not qualname:
        raise ModelContractError(f"model {path!r} is not an import path; write package.module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelContractError(f"model {path!r}: cannot import module {module_name!r} ({error}); install it or "
                                 "run from the folder that holds it") from None
    found: Any = module
    for part in qualname.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise ModelContractError(f"model {path!r}: module {module_name!r} has no {qualname!r}")
    if not isinstance(found, type):
        raise ModelContractError(f"model {path!r} is a {type(found).__name__}, not a class")
    return found


def check_model(model: Any) -> None:
    """Raise :class:`ModelContractError` unless ``model`` is an ``nn.Module`` with callable ``model``
    and ``guide`` methods."""
    name = type(model).__name__
    if not isinstance(model, nn.Module):
        raise ModelContractError(f"{name} is not a torch.nn.Module; derive it from nn.Module or PyroModule so its "
                                 "parameters can be trained and checkpointed")
    missing = [method for method in ("model", "guide") if not callable(getattr(model, method, None))]
    if missing:
        raise ModelContractError(f"{name} has no {' and no '.join(missing)} method; a model needs model(x, y=None) "
                                 "and guide(x, y=None)")


def constructor_parameters(cls: type) -> tuple[set[str], bool]:
    """The keyword names ``cls(...)`` accepts, and whether it takes any (``**kwargs``)."""
    try:
        parameters = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):  # a class implemented in C: its arguments are unknown
        return set(), True
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in parameters)


def accepts_argument(cls: type, name: str) -> bool:
    names, any_keyword = constructor_parameters(cls)
    return name in names or any_keyword


def build_model(target: str, **args: Any) -> nn.Module:
    """Build the model ``target`` (a registered name or ``module:Class``) with keyword ``args``;
    the result remembers both, so a run trained on it records how to rebuild it."""
    cls = import_model_class(target)
    if not issubclass(cls, nn.Module):
        raise ModelContractError(f"{cls.__name__} is not a torch.nn.Module; derive it from nn.Module or PyroModule so "
                                 "its parameters can be trained and checkpointed")
    names, any_keyword = constructor_parameters(cls)
    unknown = sorted(set(args) - names) if not any_keyword else []
    if unknown:
        raise ModelContractError(f"{cls.__name__} accepts no argument {unknown[0]!r} (it accepts: "
                                 f"{', '.join(sorted(names)) or 'none'})")
    try:
        model = cls(**args)
    except (TypeError, ValueError) as error:
        raise ModelContractError(f"{cls.__name__}({_format_args(args)}) failed: {error}") from None
    check_model(model)
    setattr(model, SPEC_ATTRIBUTE, ModelSpec(resolve_target(target), dict(args)))
    return model


def build_configured_model(model_config: ModelConfig, x_dim: int) -> nn.Module:
    """The model a run's configuration names; ``x_dim`` (values per datapoint) is passed where its class
    takes one and the configuration does not say."""
    args = dict(model_config.args or {})
    if "x_dim" not in args and accepts_argument(import_model_class(model_config.model), "x_dim"):
        args["x_dim"] = x_dim
    return build_model(model_config.model, **args)


def labels_for_model(model: nn.Module, labels: torch.Tensor | None) -> torch.Tensor | None:
    """The labels a model is given as ``y``: the data's labels where the model sets ``needs_labels``
    (it models p(x|y)), else None (it models p(x))."""
    return labels if getattr(model, "needs_labels", False) else None


def model_spec(model: nn.Module) -> ModelSpec:
    """How ``model`` was built: the spec :func:`build_model` attached, else its class's import path
    with unknown arguments."""
    spec = getattr(model, SPEC_ATTRIBUTE, None)
    if spec is not None:
        return spec
    cls = type(model)
    return ModelSpec(f"{cls.__module__}:{cls.__qualname__}", None)


def _format_args(args: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value!r}" for key, value in args.items())
