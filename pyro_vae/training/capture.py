"""Training steps: Pyro run eagerly every step, or a step recorded once as a graph and replayed.

Pyro builds every step in Python: effect handlers, traces, distributions, log-densities. That
costs about a millisecond per step on a CPU whatever the network's size, several times a small
network's arithmetic on a GPU. The tensor operations a step issues depend only on the batch's
shapes for most models (the built-in ones included), so :class:`CapturedStep` records the whole
step - loss, the plan's statistics and every parameter's gradient - once per batch shape with
``make_fx`` as a graph of ATen operations, and replays that graph: no Python model, guide or Pyro
handler runs any more, and random draws stay random (each replay draws afresh from torch's
generator, in the order the eager step would).

A step is captured only when it is safe to: the recording fails for a step that reads a tensor's
value in Python (data-dependent control flow, ``.item()``, Pyro's score-function estimator), and
the first replay must reproduce the eager step's loss, statistics and gradients on the same
random numbers. Otherwise Pyro runs eagerly every step and one log line says why. Steps that
validate distributions (the first of each epoch) always run eagerly. What a recording cannot see
is Python state that changes between steps without being a tensor: a plan that anneals a weight
must keep it in a tensor (as :class:`~pyro_vae.inference.objectives.NegativeELBO` keeps its KL
weight), or set ``capturable = False`` on its loss module.
"""

from __future__ import annotations

import functools
import logging
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_vae.training.fast_path import first_line

logger = logging.getLogger(__name__)

StepResult = tuple[torch.Tensor, torch.Tensor]  # the step's summed loss (detached) and its statistics


class EagerStep:
    """Forward and backward through Pyro: ``forward(*batch)`` (the loss module, or data-parallel
    around it), gradients of the loss per image left in the parameters' ``.grad``."""

    def __init__(self, loss_module: nn.Module, forward: Callable[..., torch.Tensor] | None = None) -> None:
        self.loss_module, self.forward = loss_module, forward or loss_module

    def __call__(self, batch: tuple, images_per_rank: int, validate: bool) -> StepResult:
        with pyro.validation_enabled(validate):
            loss = self.forward(*batch)
        (loss / images_per_rank).backward()
        return loss.detach(), self.loss_module.last_statistics()


class CapturedStep:
    """The same step replayed from a graph recorded per batch signature (see the module's doc);
    eager where it validates or cannot be captured (:attr:`reason` says why).

    With ``compile`` each recorded graph is compiled by ``torch.compile`` (Inductor fusing its
    element-wise work; random numbers still drawn by torch's own generator, so they are the eager
    step's), checked against the uncompiled replay, and replayed uncompiled where that fails.
    """

    def __init__(self, loss_module: nn.Module, compile: bool = False) -> None:
        self.loss_module, self.compile = loss_module, compile
        self.eager = EagerStep(loss_module)
        self.parameter_names = [name for name, p in loss_module.named_parameters() if p.requires_grad]
        self.buffer_names = [name for name, _ in loss_module.named_buffers()]
        self.graphs: dict[tuple, Callable] = {}
        self.reason: str | None = None

    def __call__(self, batch: tuple, images_per_rank: int, validate: bool) -> StepResult:
        if validate or self.reason is not None:
            return self.eager(batch, images_per_rank, validate)
        key = _signature(batch, images_per_rank)
        graph = self.graphs.get(key)
        parameters, buffers = self._tensors
        if graph is None:
            graph, result = self._capture(parameters, buffers, batch, images_per_rank)
            if graph is None:
                return self.eager(batch, images_per_rank, validate)
            self.graphs[key] = graph
        else:
            with torch.no_grad():
                result = graph(parameters, buffers, batch)
        loss, statistics, gradients = result
        for parameter, gradient in zip(parameters, gradients):
            parameter.grad = gradient
        return loss, statistics

    @functools.cached_property
    def _tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The parameters and buffers a graph reads, looked up once: they are updated in place, never replaced."""
        named_parameters, named_buffers = dict(self.loss_module.named_parameters()), dict(self.loss_module.named_buffers())
        return ([named_parameters[name] for name in self.parameter_names],
                [named_buffers[name] for name in self.buffer_names])

    def _step_function(self, images_per_rank: int) -> Callable:
        """(parameters, buffers, batch) -> (loss, statistics, gradients), the parameters and buffers swapped in."""
        module, names = self.loss_module, self.parameter_names + self.buffer_names

        def step(parameters: list[torch.Tensor], buffers: list[torch.Tensor], batch: tuple):
            with pyro.validation_enabled(False):
                loss = torch.func.functional_call(module, dict(zip(names, parameters + buffers)), batch)
                statistics = module.last_statistics()
                gradients = torch.autograd.grad(loss / images_per_rank, parameters, allow_unused=True)
            return loss.detach(), statistics.detach(), list(gradients)

        return step

    def _capture(self, parameters: list[torch.Tensor], buffers: list[torch.Tensor], batch: tuple,
                 images_per_rank: int) -> tuple[Callable | None, Any]:
        """Record the step on ``batch`` and check one replay against the eager step on the same random
        numbers; returns the graph and the replay's result (random numbers consumed as by one eager
        step), or (None, None) with :attr:`reason` set (none consumed: the eager step runs next)."""
        step = self._step_function(images_per_rank)
        device = next(t for t in batch if torch.is_tensor(t)).device  # a step may lack a part (None)
        if not getattr(self.loss_module, "capturable", True):
            return self._give_up(f"{type(self.loss_module).__name__}.capturable is False")
        state = _rng_state(device)
        try:
            expected = step(parameters, buffers, batch)
            _set_rng_state(device, state)
            graph = make_fx(step, tracing_mode="real")(parameters, buffers, batch)
            graph.graph.eliminate_dead_code()
            graph.recompile()
        except Exception as error:  # noqa: BLE001 - the recording raises whatever the traced code meets
            _set_rng_state(device, state)
            return self._give_up(f"recording it failed: {_explain(error)}")
        _set_rng_state(device, state)
        with torch.no_grad():
            replayed = graph(parameters, buffers, batch)
        mismatch = _first_mismatch(expected, replayed, self.parameter_names)
        if mismatch:
            _set_rng_state(device, state)
            return self._give_up(f"its replay differs from the eager step in {mismatch}")
        logger.info("training step captured as a graph of %d operations for batch %s",
                    sum(node.op == "call_function" for node in graph.graph.nodes), _describe(batch))
        if self.compile:
            return self._compiled(graph, parameters, buffers, batch, state, replayed)
        return graph, replayed

    def _compiled(self, graph: Callable, parameters: list[torch.Tensor], buffers: list[torch.Tensor], batch: tuple,
                  state: tuple, replayed: Any) -> tuple[Callable, Any]:
        """``graph`` compiled, if its first run (from RNG ``state``) matches ``replayed``; else ``graph``."""
        device = next(t for t in batch if torch.is_tensor(t)).device
        after_replay = _rng_state(device)
        _set_rng_state(device, state)
        compiled = torch.compile(graph, dynamic=False, options={"fallback_random": True})
        try:
            with torch.no_grad():
                result = compiled(parameters, buffers, batch)
        except Exception as error:  # noqa: BLE001 - dynamo, inductor and the C++ toolchain raise many types
            problem = f"compiling it failed ({type(error).__name__}: {first_line(error)})"
        else:
            mismatch = _first_mismatch(replayed, result, self.parameter_names)
            if not mismatch:
                logger.info("recorded step compiled with torch.compile")
                return compiled, result
            problem = f"the compiled step differs from the recorded one in {mismatch}"
        _set_rng_state(device, after_replay)
        logger.warning("%s; the recorded step is replayed uncompiled", problem)
        return graph, replayed

    def _give_up(self, reason: str) -> tuple[None, None]:
        self.reason = reason
        logger.info("training step not captured: %s; Pyro runs the model and guide every step", reason)
        return None, None


def _explain(error: BaseException) -> str:
    """What stopped the recording, and the line outside torch that did it."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if f"{os.sep}torch{os.sep}" not in frame.filename]
    where = ""
    if frames:
        frame = frames[-1]
        where = f" at {os.sep.join(Path(frame.filename).parts[-2:])}:{frame.lineno} ({frame.name})"
    if "_local_scalar_dense" in str(error) or "data-dependent" in str(error):
        return f"a tensor's value is read in Python (.item(), bool() or data-dependent control flow){where}"
    return f"{type(error).__name__}: {first_line(error)}{where}"


def _signature(batch: tuple, images_per_rank: int) -> tuple:
    return (images_per_rank,) + tuple((tuple(t.shape), t.dtype, t.device) if torch.is_tensor(t) else (type(t), t)
                                      for t in batch)


def _describe(batch: tuple) -> str:
    return ", ".join("x".join(map(str, t.shape)) if torch.is_tensor(t) else repr(t) for t in batch)


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(device: torch.device, state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _first_mismatch(expected, replayed, parameter_names: list[str]) -> str | None:
    """Where a replay's (loss, statistics, gradients) differ from the eager step's, else None."""
    pairs = [("the loss", expected[0], replayed[0]), ("the statistics", expected[1], replayed[1])]
    pairs += [(f"the gradient of {name}", a, b) for name, a, b in zip(parameter_names, expected[2], replayed[2])]
    for what, a, b in pairs:
        if (a is None) != (b is None):
            return what
        if a is not None and not torch.allclose(a, b, rtol=1e-4, atol=1e-6, equal_nan=True):
            return what
    return None
