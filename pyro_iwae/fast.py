"""
Faster stand-ins for stock PyTorch and Pyro pieces. Each computes what the piece it
replaces computes, and is kept because ``python benchmarks/kernels.py`` shows that it pays
on the CPU (figures in ``benchmarks/README.md``). The modelling modules import them from
here; read each as the stock piece it names.

- :class:`Tanh`: ``nn.Tanh``.
- :class:`BernoulliPixels`: ``dist.Bernoulli(logits=l).to_event(1)``.
- :class:`DiagonalNormal`: ``dist.Normal(loc, scale).to_event(1)``.
- :class:`DiagonalNormalMixture`: ``MixtureSameFamily`` of diagonal Gaussians, kept for memory.
- :func:`keep_freed_memory`: glibc's ``malloc`` tunables ``trim_threshold`` and ``mmap_threshold``,
  a process-wide setting that a script makes once, in its ``__main__``.
"""

from __future__ import annotations

import ctypes
import math
import sys

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints
from torch import nn
from torch.autograd.function import once_differentiable


class Tanh(nn.Module):
    """
    ``nn.Tanh``, on the CPU computed as ``2 sigmoid(2x) - 1`` (equal to within 2e-7 in
    float32), because on some CPUs PyTorch's ``tanh`` kernel is several times slower than its
    ``sigmoid`` (on others it is faster: ``benchmarks/README.md``, section 5, says why it stays).
    The backward pass is tanh's own, ``grad * (1 - tanh(x)^2)``.
    Elsewhere (CUDA) it is ``torch.tanh``.
    """

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return _SigmoidTanh.apply(inputs) if inputs.device.type == "cpu" else torch.tanh(inputs)


class _SigmoidTanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs: torch.Tensor) -> torch.Tensor:
        # no tensor that autograd saves is changed in place, so that a trace of this forward
        # (pyro_iwae.compiled) can be differentiated
        outputs = (2 * inputs).sigmoid_().mul(2).sub_(1)
        ctx.save_for_backward(outputs)
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (outputs,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, outputs)


class BernoulliPixels(TorchDistribution):
    """
    ``dist.Bernoulli(logits=l).to_event(1)``: ``x_dim`` independent Bernoulli pixels;
    ``event_shape == [x_dim]``::

        log p(x) = sum_i x_i log sigmoid(l_i) + (1 - x_i) log sigmoid(-l_i) = x . l - sum_i softplus(l_i)

    Its :meth:`log_prob` is one matrix-vector product and one ``softplus``, where
    Bernoulli's ``binary_cross_entropy_with_logits`` allocates one more
    ``[num_particles, batch_size, x_dim]`` tensor.

    :param logits: ``[..., x_dim]`` logits ``l``; the leading dimensions are the batch shape.
    """

    arg_constraints = {"logits": constraints.independent(constraints.real, 1)}
    support = constraints.independent(constraints.boolean, 1)

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = None) -> None:
        self.logits = logits
        super().__init__(logits.shape[:-1], logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance: BernoulliPixels | None = None) -> BernoulliPixels:
        new = self._get_checked_instance(BernoulliPixels, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        super(BernoulliPixels, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> torch.Tensor:
        """``[..., x_dim]`` pixel probabilities ``sigmoid(l)``."""
        return torch.sigmoid(self.logits)

    @property
    def variance(self) -> torch.Tensor:
        return self.mean * torch.sigmoid(-self.logits)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        with torch.no_grad():
            return torch.bernoulli(self.mean.expand(self._extended_shape(sample_shape)))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """
        :param value: binary images, broadcastable with ``logits``.
        :returns: ``log p(value)``, the batch shape of ``logits`` and ``value`` broadcast.
        """
        if self._validate_args:
            self._validate_sample(value)
        return torch.linalg.vecdot(self.logits, value) - F.softplus(self.logits).sum(-1)


class DiagonalNormal(TorchDistribution):
    """
    ``N(loc, diag(scale^2))`` over ``dim``-vectors; ``event_shape == [dim]``::

        log N(z; loc, scale) = -1/2 sum_d ((z_d - loc_d) / scale_d)^2 - sum_d log scale_d - dim/2 log(2 pi)

    ``dist.Normal(loc, scale).to_event(1)``, with less work per particle. Pyro's plates
    :meth:`expand` a guide's ``[batch_size, dim]`` parameters to ``[num_particles, batch_size, dim]``,
    and ``torch.distributions.Normal`` then forms ``scale^2`` and ``log scale`` for every
    particle. Here :meth:`expand` keeps the parameters as they are and :meth:`log_prob`
    broadcasts, so the normalizer is formed once per data point.

    :param loc: ``[..., dim]``.
    :param scale: ``[..., dim]``, positive, the shape of ``loc``.
    """

    arg_constraints = {"loc": constraints.real_vector, "scale": constraints.independent(constraints.positive, 1)}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, validate_args: bool | None = None) -> None:
        if loc.dim() < 1 or loc.shape != scale.shape:
            raise ValueError(
                f"DiagonalNormal needs loc and scale of one shape [..., dim], got {tuple(loc.shape)} and"
                f" {tuple(scale.shape)}: expand the smaller one"
            )
        self.loc, self.scale = loc, scale
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance: DiagonalNormal | None = None) -> DiagonalNormal:
        new = self._get_checked_instance(DiagonalNormal, _instance)
        new.loc, new.scale = self.loc, self.scale
        super(DiagonalNormal, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def mean(self) -> torch.Tensor:
        return self.loc.expand(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> torch.Tensor:
        return self.scale.pow(2).expand(self.batch_shape + self.event_shape)

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        """``loc + scale * eps``, ``eps ~ N(0, I)`` of shape ``sample_shape + batch_shape + [dim]``."""
        eps = torch.randn(self._extended_shape(sample_shape), dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * eps

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """
        :param value: ``[..., dim]``, broadcastable with ``loc``.
        :returns: ``[...]``, the batch shapes of ``loc`` and ``value`` broadcast.
        """
        if self._validate_args:
            self._validate_sample(value)
        log_normalizer = self.scale.log().sum(-1) + 0.5 * self.event_shape[0] * math.log(2 * math.pi)
        return -0.5 * ((value - self.loc) / self.scale).pow(2).sum(-1) - log_normalizer


class DiagonalNormalMixture(TorchDistribution):
    """
    A mixture of ``num_components`` diagonal Gaussians in ``dim`` dimensions;
    ``event_shape == [dim]``::

        log p(z) = logsumexp_j [ log pi_j + sum_d log N(z_d; loc_jd, scale_jd) ]

    ``MixtureSameFamily(Categorical(logits=mixture_logits), Normal(loc, scale).to_event(1))``,
    whose ``log_prob`` forms an ``[N, num_components, dim]`` tensor for ``N`` points: here the
    squared distances to all components are formed with two matrix products
    (``[N, dim] @ [dim, num_components]``), so a VampPrior with 500 components fits in the
    evaluator's memory. They are formed in float64: expanded, ``z^2/scale^2 - 2 z loc/scale^2 +
    loc^2/scale^2`` cancels, and in float32 a point near a narrow component (scale 0.01, as the
    encoder's Gaussians that a VampPrior mixes reach) far from 0 loses nats.

    :param mixture_logits: ``[num_components]`` unnormalized log weights ``log pi``.
    :param loc: ``[num_components, dim]``.
    :param scale: ``[num_components, dim]``, positive.
    """

    arg_constraints = {
        "mixture_logits": constraints.real_vector,
        "loc": constraints.independent(constraints.real, 2),
        "scale": constraints.independent(constraints.positive, 2),
    }
    support = constraints.real_vector

    def __init__(
        self, mixture_logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, validate_args: bool | None = None
    ) -> None:
        if loc.dim() != 2 or loc.shape != scale.shape or mixture_logits.shape != loc.shape[:1]:
            raise ValueError(
                "DiagonalNormalMixture needs mixture_logits [num_components] and loc, scale [num_components, dim],"
                f" got {tuple(mixture_logits.shape)}, {tuple(loc.shape)}, {tuple(scale.shape)}"
            )
        self.mixture_logits, self.loc, self.scale = mixture_logits, loc, scale
        super().__init__(torch.Size(), loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance: DiagonalNormalMixture | None = None) -> DiagonalNormalMixture:
        new = self._get_checked_instance(DiagonalNormalMixture, _instance)
        new.mixture_logits, new.loc, new.scale = self.mixture_logits, self.loc, self.scale
        super(DiagonalNormalMixture, new).__init__(torch.Size(batch_shape), self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)[:-1]
        with torch.no_grad():
            component = torch.distributions.Categorical(logits=self.mixture_logits).sample(shape)
            return torch.normal(self.loc[component], self.scale[component])

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """
        :param value: ``[..., dim]``.
        :returns: ``[...]`` broadcast with the batch shape.
        """
        if self._validate_args:
            self._validate_sample(value)
        dtype = torch.promote_types(value.dtype, self.loc.dtype)
        z = value.double()  # [..., dim]
        loc, precision = self.loc.double(), self.scale.double().pow(-2)  # [num_components, dim]
        # sum_d (z_d - loc_jd)^2 / scale_jd^2, expanded: z^2 . precision - 2 z . loc*precision + loc^2 . precision
        squared_distance = z.pow(2) @ precision.T - 2 * z @ (loc * precision).T + (loc.pow(2) * precision).sum(-1)
        log_normalizer = self.scale.log().sum(-1) + 0.5 * loc.shape[-1] * math.log(2 * math.pi)
        log_normal = -0.5 * squared_distance.to(dtype) - log_normalizer
        log_prob = torch.logsumexp(log_normal + self.mixture_logits.log_softmax(-1), -1)
        return log_prob.expand(torch.broadcast_shapes(log_prob.shape, self.batch_shape))


#: ``mallopt`` parameters, from glibc's ``malloc.h``
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: the largest ``mmap`` threshold glibc accepts on 64-bit machines
MAX_MMAP_THRESHOLD = 32 * 2**20


def keep_freed_memory(trim_threshold: int = 2**30) -> bool:
    """
    Let glibc keep up to ``trim_threshold`` bytes of freed memory, and serve blocks up to
    32 MiB from it, for the rest of the process, instead of giving them back to the system.

    A training step and an evaluator pass allocate the same tens of megabytes of tensors,
    free them, and allocate them again. By default glibc's ``malloc`` returns freed memory
    to the operating system once more than ``M_TRIM_THRESHOLD`` of it is free at the top of
    the heap, and serves large blocks with fresh ``mmap`` calls, so every pass faults its
    memory back in, a page at a time. With this the process holds on to its peak memory,
    which it would reach again on the next pass anyway. Blocks above 32 MiB (glibc's largest
    ``mmap`` threshold) are still mapped afresh, which is why the evaluator's default passes
    keep every tensor below that. It changes no result, only how memory is recycled: call it
    once, from a script's ``__main__``.

    :returns: whether it took effect: ``False`` where the C library is not glibc
        (macOS, Windows, musl), where nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
