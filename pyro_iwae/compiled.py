"""
A training step (and an evaluator pass) without Pyro's overhead: traced once, then compiled.

At the batch sizes and particle counts people train with (batch 20, k = 1 or 5), a step of a
Pyro objective spends more time in Python (running the model and guide under Pyro's handlers,
registering every parameter, checking the data plate, building distributions) than in
arithmetic. None of that changes from one step to the next, so :func:`compile_objective` does
it once: it runs the objective's :meth:`surrogate_loss` under :func:`torch.fx.experimental.proxy_tensor.make_fx`,
which records the tensor operations Pyro performs (the random draws included, as operations)
into a graph whose inputs are the module's parameters and the step's arguments, and compiles
that graph, forward and backward, with :func:`torch.compile`. Later steps run the compiled
graph: the same model, guide, bound and estimator, and (``fallback_random``) the same random
numbers as the eager step draws, so losses and gradients agree with eager ones to float
rounding (``tests/test_compiled.py``), and a run can be stopped and resumed as before.

What a trace cannot see, it refuses: a parameter outside ``module`` (it would be frozen into the
graph as a constant, and never learn) and an objective whose gradient is not one backward pass of
one scalar (DReG's and PIWAE's take two; :data:`COMPILABLE` lists those it can compile). The graph
is specific to the shapes of the step's arguments: a batch of another size is traced and compiled
again (once). Where the backend cannot compile (inductor needs a C++ compiler on the CPU), the
step warns once and runs eagerly.

:class:`CompiledFunction` is the tool underneath, for any function of tensors that runs Pyro
code; :func:`~pyro_iwae.evaluation.log_likelihood` compiles its passes with it (``compile=True``),
where inductor fuses the element-wise work after each matmul (``softplus``, ``x . l``, the sums).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import pyro
import pyro.util
import torch
from pyro.infer import ELBO
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

from pyro_iwae.objectives import CIWAE_ELBO, IWAE_ELBO, IWAE_STL, MIWAE_ELBO, VAE_ELBO, OneBackwardPass

#: the objectives whose step is one backward pass of :meth:`surrogate_loss`
COMPILABLE = (VAE_ELBO, IWAE_ELBO, IWAE_STL, MIWAE_ELBO, CIWAE_ELBO)


class CompiledFunction:
    """
    ``fn``, a function of tensors that may run Pyro code, traced once on ``example_args`` into a graph
    of tensor operations (:func:`~torch.fx.experimental.proxy_tensor.make_fx`) and compiled by
    :func:`torch.compile`; call it with tensors of the example's shapes.

    The trace leaves the random number generators as it found them, and the compiled graph draws
    with PyTorch's own generators (inductor's ``fallback_random``), so a call draws what ``fn``
    would have drawn. A tensor ``fn`` reads besides its arguments is a constant of the graph, and so
    is every Python number it reads (an annealing factor, a temperature): change one, compile again.
    Pyro's validation is off in the trace: its checks read tensors' values, which a trace cannot
    (as in :mod:`pyro.ops.jit`). Where the backend cannot compile (inductor needs a C++ compiler on
    the CPU), the first call warns and every call runs ``fn`` itself. One that a trace cannot follow
    (Python that reads a tensor's value) is refused with a :class:`ValueError`.

    :param name: what messages call ``fn`` (default: its ``__name__``).
    :ivar graph: the traced :class:`torch.fx.GraphModule`.
    """

    def __init__(
        self, fn: Callable, example_args: Sequence, backend: str | Callable = "inductor", name: str | None = None
    ) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)  # a functools.partial has no __name__
        rng_state = pyro.util.get_rng_state()
        try:
            with torch.random.fork_rng(devices=_cuda_devices(example_args)), pyro.validation_enabled(False):
                self.graph = make_fx(fn)(*example_args)
        except RuntimeError as error:
            if "data-dependent" not in str(error):
                raise
            raise ValueError(
                f"{self.name} cannot be traced: it reads a tensor's value in Python (data-dependent control flow,"
                " .item(), or a transform's inverse that Pyro computes with a data-dependent step, as the IAF"
                " guide's under IWAE_STL), which a trace cannot record. Run it uncompiled (compile=False, or"
                " without --compile)."
            ) from error
        finally:
            pyro.util.set_rng_state(rng_state)
        options = {"fallback_random": True} if backend == "inductor" else None
        self._compiled: Callable | None = torch.compile(self.graph, backend=backend, options=options, dynamic=False)

    def __call__(self, *args):
        if self._compiled is not None:
            try:
                return self._compiled(*args)
            except torch._dynamo.exc.BackendCompilerFailed as error:  # on the first call, before any draw
                warnings.warn(f"could not compile {self.name}, so it runs uncompiled: {error}", stacklevel=2)
                self._compiled = None
        return self.fn(*args)


class CompiledObjective(OneBackwardPass):
    """
    ``objective`` with its :meth:`surrogate_loss` compiled (see the module's docstring), and so its step
    (:meth:`backward`, :meth:`loss_and_grads`); every other attribute is the objective's own.

    :param objective: an instance of one of :data:`COMPILABLE` (exactly: a subclass may change the
        gradient).
    :param module: the ``nn.Module`` that holds every parameter the model and guide register.
    :param backend: :func:`torch.compile`'s backend (``"inductor"``: generated C++ or Triton kernels).
    """

    def __init__(self, objective: ELBO, module: nn.Module, backend: str | Callable = "inductor") -> None:
        if type(objective) not in COMPILABLE:
            names = ", ".join(cls.__name__ for cls in COMPILABLE)
            raise ValueError(
                f"{type(objective).__name__} cannot be compiled: its gradient is not one backward pass of one"
                f" surrogate loss. Compile one of {names}, or train it uncompiled."
            )
        self.objective = objective
        self.module = module
        self.backend = backend
        self._steps: dict[tuple, CompiledFunction] = {}

    def __getattr__(self, name: str):
        return getattr(self.objective, name)

    def surrogate_loss(
        self, model: Callable, guide: Callable, *args: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The objective's ``(surrogate_loss, loss)``, from the graph compiled for these arguments' shapes."""
        # what the graph depends on besides the parameters' values
        parameters = tuple((p.dtype, p.device) for p in self.module.parameters())
        key = (
            tuple((arg.shape, arg.dtype, arg.device) for arg in args),
            parameters,
            self.module.training,
            model,
            guide,
        )
        if key not in self._steps:
            self._steps[key] = self._compile(model, guide, args)
        return self._steps[key](list(self.module.parameters()), *args)

    def loss_and_grads(self, model: Callable, guide: Callable, *args: torch.Tensor) -> float:
        """:meth:`backward`, its loss as a float."""
        return self.backward(model, guide, *args).item()

    def _compile(self, model: Callable, guide: Callable, args: tuple[torch.Tensor, ...]) -> CompiledFunction:
        """``surrogate_loss(model, guide, *args)`` as a function of the parameters and ``args``, compiled."""
        objective = self.objective
        if objective.max_plate_nesting == float("inf"):  # leaves the generators as they were
            objective._guess_max_plate_nesting(model, guide, args, {})

        def surrogate_loss(parameters: list[torch.Tensor], *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # the trace knows tensors by identity: the module computes with the very tensors passed as
            # ``parameters``, so they are the graph's inputs, and later calls pass them again
            return objective.surrogate_loss(model, guide, *args)

        name = f"the step of {type(objective).__name__}"
        step = CompiledFunction(surrogate_loss, (list(self.module.parameters()), *args), self.backend, name)
        _refuse_frozen_parameters(step.graph)
        return step


def compile_objective(objective: ELBO, module: nn.Module, backend: str | Callable = "inductor") -> CompiledObjective:
    """``objective`` with its training step traced once and compiled: :class:`CompiledObjective`."""
    return CompiledObjective(objective, module, backend)


def _refuse_frozen_parameters(graph: torch.fx.GraphModule) -> None:
    """
    Refuse a graph that holds, as a constant, a tensor that requires a gradient: a parameter that is not
    in the module (a ``pyro.param``, or another module's), which the compiled step would never train.
    """
    for node in graph.graph.nodes:
        value = getattr(graph, node.target) if node.op == "get_attr" else None
        if isinstance(value, torch.Tensor) and value.requires_grad:
            names = [name for name, p in pyro.get_param_store().named_parameters() if p is value]
            raise ValueError(
                f"the step uses a parameter ({names[0] if names else f'shape {tuple(value.shape)}'}) that is not"
                " in the module passed to compile_objective, so the compiled step would hold it fixed. Pass a"
                " module that holds every parameter the model and guide use (with the others as submodules or"
                " nn.Parameter attributes), or train uncompiled."
            )


def _cuda_devices(tensors: Sequence) -> list[torch.device]:
    """The CUDA devices of ``tensors`` (tensors, and lists of them): the generators a trace draws from."""
    flat = [t for item in tensors for t in (item if isinstance(item, (list, tuple)) else [item])]
    return sorted({t.device for t in flat if isinstance(t, torch.Tensor) and t.device.type == "cuda"}, key=str)
