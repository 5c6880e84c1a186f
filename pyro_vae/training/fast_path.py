"""Speed settings of training, measured in ``scripts/benchmark.py`` and docs/benchmarks.md.

``fast`` (the default; ``--validate-every-step`` turns it off): the fused Adam kernel (one kernel
for all parameters instead of a handful of ops each), and Pyro's validation of distribution
arguments, samples and site shapes on the first step of each epoch only (it re-checks the same
model, guide and binarized data every step otherwise; our own per-step non-finite check stays on).
``--compile``: with the captured step, each recorded graph is compiled
(:class:`pyro_vae.training.capture.CapturedStep`); when the settings keep the step eager
(``--no-capture``, data-parallel, ``--detect-anomaly``, ``--validate-every-step``), the torch
networks inside the model and guide are compiled here (the Pyro model and guide stay Python,
traced every step).
Compilation fails in many ways (no C++ compiler, an unsupported operation, an old GPU), so it is
tried first on a copy: if the copy's training step does not compile and run, the model is left as
it was and training continues eagerly, with a warning that names the reason.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable

import torch
from torch import nn

logger = logging.getLogger(__name__)


# Devices torch has a fused Adam kernel for, among those this library trains on.
FUSED_ADAM_DEVICES = ("cpu", "cuda")


def make_adam(parameters: Iterable[nn.Parameter], lr: float, fused: bool, beta1: float = 0.9,
              weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam with betas (``beta1``, 0.999) and ``weight_decay`` (``weight_decay * p`` added to each gradient);
    with ``fused`` its single-kernel implementation when every parameter is a floating-point tensor on a
    device that has it (CPU, CUDA), else the default implementation, with a notice."""
    parameters = list(parameters)
    betas = (beta1, 0.999)
    if fused:
        unsupported = {f"{p.device.type}/{p.dtype}" for p in parameters
                       if p.device.type not in FUSED_ADAM_DEVICES or not p.is_floating_point()}
        if not unsupported:
            return torch.optim.Adam(parameters, lr=lr, betas=betas, weight_decay=weight_decay, fused=True)
        logger.warning("fused Adam has no kernel for parameters on %s; using the default Adam",
                       ", ".join(sorted(unsupported)))
    return torch.optim.Adam(parameters, lr=lr, betas=betas, weight_decay=weight_decay)


def networks_of(model: nn.Module) -> list[nn.Module]:
    """The model's direct sub-networks (encoder, decoder, classifier): what the fast path compiles."""
    return [child for child in model.children() if any(True for _ in child.parameters())]


def compile_networks(loss_module: nn.Module, example_batch: tuple) -> bool:
    """Compile every network of ``loss_module.model`` in place if a copy's training step on
    ``example_batch`` compiles and runs; return whether it did. Parameters and ``state_dict`` keys
    are unchanged either way (``nn.Module.compile``), so checkpoints stay interchangeable."""
    probe = copy.deepcopy(loss_module)
    try:
        for network in networks_of(probe.model):
            network.compile()
        probe(*example_batch).backward()
    except Exception as error:  # noqa: BLE001 - dynamo, inductor and the C++ toolchain raise many types
        logger.warning("torch.compile did not work here (%s: %s); training continues without compilation",
                       type(error).__name__, first_line(error))
        return False
    for network in networks_of(loss_module.model):
        network.compile()
    return True


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"
