"""
IWAE_STL and IWAE_DReG on a linear-Gaussian model whose posterior and ELBO have
closed forms (tests/linear_gaussian.py), with learnable model and guide parameters.
"""

import contextlib
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import LinearGaussian
from pyro import poutine
from torch import nn

from pyro_iwae.diagnostics import gradient_samples, signal_to_noise
from pyro_iwae.models import ARCHITECTURES, VAE
from pyro_iwae.objectives import make_objective

ESTIMATORS = ("iwae-stl", "iwae-dreg")


class LinearGaussianVAE(nn.Module):
    """
    p(z) = N(0, I), p(x | z) = N(W z + b, sigma^2) with learnable ``b``;
    q(z | x) = N(A x + c, diag(exp(2 s))) with learnable ``A, c, s``, which starts at
    the exact posterior shifted by ``guide_shift`` and scaled by ``guide_scale``.
    """

    def __init__(self, guide_shift=0.0, guide_scale=1.0):
        super().__init__()
        self.truth = LinearGaussian()
        W, b, sigma = self.truth.W, self.truth.b, self.truth.sigma
        variance = 1 / (1 + (W**2).sum(0) / sigma**2)
        A = W.T * (variance / sigma**2)[:, None]
        self.register_buffer("W", W)
        self.sigma = sigma
        self.b = nn.Parameter(b.clone())
        self.A = nn.Parameter(A.clone())
        self.c = nn.Parameter(-A @ b + guide_shift)
        self.log_scale = nn.Parameter(0.5 * variance.log() + torch.log(torch.tensor(guide_scale, dtype=torch.float64)))

    def model(self, x):
        pyro.module("linear_gaussian", self)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("linear_gaussian", self)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ self.A.T + self.c, self.log_scale.exp()).to_event(1))

    def guide_parameters(self):
        return [self.A, self.c, self.log_scale]

    def closed_form_elbo(self, x):
        """log p(x) - KL(q || p(z | x)), differentiable in the guide's parameters."""
        posterior = torch.distributions.Normal(*self.truth.posterior(x))
        guide = torch.distributions.Normal(x @ self.A.T + self.c, self.log_scale.exp())
        return self.truth.log_marginal(x) - torch.distributions.kl_divergence(guide, posterior).sum(-1)


@pytest.fixture
def x():
    return LinearGaussian().sample_x(3).double()


@pytest.mark.parametrize("objective", ESTIMATORS)
def test_loss_and_model_gradient_equal_iwae_on_the_same_samples(x, objective):
    vae = LinearGaussianVAE(guide_shift=0.5, guide_scale=1.5)
    results = {}
    for name in ("iwae", objective):
        vae.zero_grad()
        pyro.set_rng_seed(1)
        loss = make_objective(name, 7).loss_and_grads(vae.model, vae.guide, x)
        results[name] = loss, vae.b.grad.clone(), vae.c.grad.clone()
    assert results[objective][0] == pytest.approx(results["iwae"][0], rel=1e-12)
    assert torch.allclose(results[objective][1], results["iwae"][1], rtol=1e-10)
    assert not torch.allclose(results[objective][2], results["iwae"][2])  # the guide's gradient differs


@pytest.mark.parametrize("objective", ESTIMATORS)
def test_guide_gradient_has_zero_variance_at_the_exact_posterior(x, objective):
    vae = LinearGaussianVAE()
    iwae = gradient_samples(
        make_objective("iwae", 5), vae.model, vae.guide, x, parameters=vae.guide_parameters(), num_samples=20
    )
    ours = gradient_samples(
        make_objective(objective, 5), vae.model, vae.guide, x, parameters=vae.guide_parameters(), num_samples=20
    )
    assert iwae.std(0).max() > 0.1
    assert ours.abs().max() < 1e-9  # log w = log p(x) for every z: no path gradient at all


def test_stl_and_dreg_are_unbiased_for_the_elbo_at_k_1(x):
    """At k = 1 both reduce to the path gradient of the ELBO, whose value is known in closed form."""
    vae = LinearGaussianVAE(guide_shift=0.5, guide_scale=1.5)
    vae.zero_grad()
    (-vae.closed_form_elbo(x).sum()).backward()
    exact = torch.cat([p.grad.flatten() for p in vae.guide_parameters()])
    for objective in ESTIMATORS:
        samples = gradient_samples(
            make_objective(objective, 1), vae.model, vae.guide, x, parameters=vae.guide_parameters(), num_samples=2000
        )
        standard_error = samples.std(0) / samples.shape[0] ** 0.5
        assert ((samples.mean(0) - exact).abs() < 4.5 * standard_error).all(), objective
        assert (exact.abs() > 10 * standard_error).sum() >= 4  # the test can tell a wrong mean


def test_dreg_is_unbiased_for_the_iwae_gradient(x):
    """E[DReG's guide gradient] = E[IWAE's] (Tucker et al., 2019, eq. 5), at k = 8."""
    vae = LinearGaussianVAE(guide_shift=0.5, guide_scale=1.5)
    iwae = gradient_samples(
        make_objective("iwae", 8), vae.model, vae.guide, x, parameters=vae.guide_parameters(), num_samples=4000
    )
    dreg = gradient_samples(
        make_objective("iwae-dreg", 8), vae.model, vae.guide, x, parameters=vae.guide_parameters(), num_samples=1000
    )
    standard_error = (iwae.var(0) / iwae.shape[0] + dreg.var(0) / dreg.shape[0]).sqrt()
    assert ((iwae.mean(0) - dreg.mean(0)).abs() < 4.5 * standard_error).all()
    assert (iwae.mean(0).abs() > 10 * standard_error).sum() >= 4  # the test can tell a wrong mean
    assert (dreg.var(0) < iwae.var(0)).all()


def test_dreg_guide_snr_grows_with_k_while_iwae_snr_decays():
    """Rainforth et al. (2018): IWAE's guide SNR falls like 1/sqrt(k); DReG's does not."""
    x = LinearGaussian().sample_x(1).double()
    vae = LinearGaussianVAE(guide_shift=0.5, guide_scale=1.5)
    snr = {
        (objective, k): signal_to_noise(
            gradient_samples(make_objective(objective, k), vae.model, vae.guide, x, parameters=[vae.c], num_samples=400)
        ).mean()
        for objective in ("iwae", "iwae-dreg")
        for k in (4, 256)
    }
    assert snr["iwae", 256] < snr["iwae", 4] / 2  # theory: / 8
    assert snr["iwae-dreg", 256] > snr["iwae-dreg", 4]


@pytest.mark.parametrize("objective", ESTIMATORS)
def test_score_function_guide_is_refused(x, objective):
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("k", dist.Poisson(3.0))

    with pytest.raises(ValueError, match="'k' .* not reparameterized"):
        make_objective(objective, 3).loss_and_grads(LinearGaussianVAE().model, guide, x)


@pytest.mark.parametrize("objective", ["iwae", *ESTIMATORS])
def test_a_scaled_data_plate_scales_the_loss_and_every_gradient_once(x, objective):
    """N / B on a subsample: the model's gradient, the guide's through z and the boundary's each take it once."""
    vae = LinearGaussianVAE(guide_shift=0.5, guide_scale=1.5)

    def run(scale):
        vae.zero_grad()
        pyro.set_rng_seed(0)
        with poutine.scale(scale=scale):
            loss = make_objective(objective, 3).loss_and_grads(vae.model, vae.guide, x)
        return loss, {name: p.grad.clone() for name, p in vae.named_parameters()}

    loss, grads = run(1.0)
    scaled_loss, scaled_grads = run(5.0)
    assert scaled_loss == pytest.approx(5 * loss, rel=1e-12)
    assert all(torch.allclose(scaled_grads[name], 5 * grad, rtol=1e-10) for name, grad in grads.items())


@pytest.mark.parametrize(
    "objective, options, message",
    [
        ("iwae-stl", {}, "the model samples a latent that the guide lacks and that cannot be reparameterized"),
        ("iwae-dreg", {}, "the model samples a latent that the guide lacks and that cannot be reparameterized"),
        ("ciwae", {"beta": 0.5}, "CIWAE_ELBO needs every latent reparameterized"),
        ("piwae", {"num_groups": 2}, "PIWAE_ELBO needs every latent reparameterized"),
    ],
)
@pytest.mark.parametrize("where", ["model only", "model and guide"])
def test_a_discrete_latent_is_refused_by_the_objectives_without_a_score_function_term(
    x, objective, options, message, where
):
    """The score-function term of a discrete latent would be dropped silently: a biased gradient."""
    vae = LinearGaussianVAE()

    def model(x):
        pyro.module("linear_gaussian", vae)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("c", dist.Bernoulli(x.new_tensor(0.3)))
            pyro.sample("x", dist.Normal(z @ vae.W.T + vae.b, vae.sigma).to_event(1), obs=x)

    def guide(x):
        pyro.module("linear_gaussian", vae)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ vae.A.T + vae.c, vae.log_scale.exp()).to_event(1))
            if where == "model and guide":
                pyro.sample("c", dist.Bernoulli(x.new_tensor(0.6)))

    if where == "model and guide" and objective in ESTIMATORS:
        message = "'c' .* not reparameterized"
    with pytest.raises(ValueError, match=message):
        make_objective(objective, 2, **options).loss_and_grads(model, guide, x)


class HierarchicalLinearGaussian(nn.Module):
    """
    z2 ~ N(0, 1), z1 ~ N(a z2, s^2), x ~ N(w z1 + b, sigma^2 I) with scalar z1, z2; the guide
    q(z1 | x) q(z2 | z1) is Gaussian and linear in its input, and starts at the exact posterior
    p(z1 | x) p(z2 | z1) (the chain is Markov), shifted by ``guide_shift``.
    """

    a, s, sigma = 1.5, 0.6, 0.4

    def __init__(self, guide_shift=0.0):
        super().__init__()
        self.register_buffer("w", torch.tensor([1.0, -0.5, 0.8], dtype=torch.float64))
        self.register_buffer("b", torch.tensor([0.3, 0.0, -0.2], dtype=torch.float64))
        z1_precision = 1 / (self.a**2 + self.s**2) + (self.w**2).sum() / self.sigma**2
        z2_precision = 1 + self.a**2 / self.s**2
        self.z1_weight = nn.Parameter(self.w / (self.sigma**2 * z1_precision))  # loc = (x - b) . z1_weight
        self.z1_shift = nn.Parameter(torch.tensor(guide_shift, dtype=torch.float64))
        self.z1_log_scale = nn.Parameter(-0.5 * z1_precision.log())
        self.z2_weight = nn.Parameter(torch.tensor(self.a / self.s**2 / z2_precision, dtype=torch.float64))
        self.z2_shift = nn.Parameter(torch.tensor(guide_shift, dtype=torch.float64))
        self.z2_log_scale = nn.Parameter(torch.tensor(-0.5 * math.log(z2_precision), dtype=torch.float64))

    def model(self, x):
        pyro.module("hierarchical", self)
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(1), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(self.a * z2, self.s).to_event(1))
            pyro.sample("x", dist.Normal(z1 * self.w + self.b, self.sigma).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("hierarchical", self)
        with pyro.plate("data", x.shape[0]):
            z1_loc = ((x - self.b) @ self.z1_weight)[..., None] + self.z1_shift
            z1 = pyro.sample("z1", dist.Normal(z1_loc, self.z1_log_scale.exp()).to_event(1))
            z2_loc = self.z2_weight * z1 + self.z2_shift
            pyro.sample("z2", dist.Normal(z2_loc, self.z2_log_scale.exp()).to_event(1))


@pytest.mark.parametrize("objective", ESTIMATORS)
def test_two_layer_guide_gradient_has_zero_variance_at_the_exact_posterior(objective):
    """Only if the path through q(z2 | z1)'s input z1 is kept do the guide's gradients cancel exactly."""
    vae = HierarchicalLinearGaussian()
    x = torch.tensor([[0.9, -0.4, 0.5], [-1.0, 0.6, -0.9]], dtype=torch.float64)
    iwae = gradient_samples(
        make_objective("iwae", 5), vae.model, vae.guide, x, parameters=list(vae.parameters()), num_samples=20
    )
    ours = gradient_samples(
        make_objective(objective, 5), vae.model, vae.guide, x, parameters=list(vae.parameters()), num_samples=20
    )
    assert iwae.std(0).max() > 0.1
    assert ours.abs().max() < 1e-9


def test_two_layer_dreg_is_unbiased_for_the_iwae_gradient():
    vae = HierarchicalLinearGaussian(guide_shift=0.4)
    x = torch.tensor([[0.9, -0.4, 0.5]], dtype=torch.float64)
    iwae = gradient_samples(
        make_objective("iwae", 8), vae.model, vae.guide, x, parameters=list(vae.parameters()), num_samples=3000
    )
    dreg = gradient_samples(
        make_objective("iwae-dreg", 8), vae.model, vae.guide, x, parameters=list(vae.parameters()), num_samples=1000
    )
    standard_error = (iwae.var(0) / iwae.shape[0] + dreg.var(0) / dreg.shape[0]).sqrt()
    assert ((iwae.mean(0) - dreg.mean(0)).abs() < 4.5 * standard_error).all()
    assert (iwae.mean(0).abs() > 10 * standard_error).sum() >= 2  # the test can tell a wrong mean


@pytest.mark.parametrize("objective", ESTIMATORS)
@pytest.mark.parametrize("layers", sorted(ARCHITECTURES))
@pytest.mark.parametrize("prior", ["normal", "vamp"])
@pytest.mark.parametrize("guide", ["normal", "iaf"])
def test_model_gradient_is_iwaes_and_every_guide_parameter_gets_its_own(objective, layers, prior, guide):
    """
    On the same draws, every parameter that only the model reads (the decoder's, the prior's) gets
    IWAE's gradient, and every parameter of the guide a gradient that is finite, not zero and not IWAE's
    (in float64, where the two differ by 1e-13 of the largest component for the model and by more than
    20 % for the guide).
    """
    torch.manual_seed(0)
    vae = VAE(*ARCHITECTURES[layers], prior=prior, guide=guide).double()
    x = torch.bernoulli(torch.full((4, 784), 0.2, dtype=torch.float64))
    grads = {}
    for name in ("iwae", objective):
        vae.zero_grad()
        pyro.set_rng_seed(1)
        make_objective(name, 3).loss_and_grads(vae.model, vae.guide, x)
        grads[name] = {n: p.grad.clone() for n, p in vae.named_parameters()}  # every parameter has a .grad
    for n, ours in grads[objective].items():
        iwae = grads["iwae"][n]
        difference = (ours - iwae).abs().max() / iwae.abs().max()
        if n.startswith("encoder."):
            assert ours.isfinite().all() and ours.abs().max() > 0 and difference > 0.01, n
        else:
            assert iwae.abs().max() > 0 and difference < 1e-10, n


@pytest.mark.parametrize("guide", ["normal", "iaf"])
def test_dreg_trains_a_vae(guide):
    torch.manual_seed(0)
    vae = VAE(prior="vamp", guide=guide)
    x = torch.bernoulli(torch.full((8, 784), 0.2))
    elbo = make_objective("iwae-dreg", 4)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        losses.append(elbo.loss_and_grads(vae.model, vae.guide, x))
        optimizer.step()
    assert sum(losses[-5:]) < sum(losses[:5]) - 5 * 8  # more than 5 nats per image


class SubsampledLinearGaussianVAE(LinearGaussianVAE):
    """The same model and guide with the data plate subsampled: every site carries the scale N / B."""

    def model(self, x):
        pyro.module("linear_gaussian", self)
        with pyro.plate("data", x.shape[0], subsample_size=4) as rows:
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1), obs=x[rows])

    def guide(self, x):
        pyro.module("linear_gaussian", self)
        with pyro.plate("data", x.shape[0], subsample_size=4) as rows:
            pyro.sample("z", dist.Normal(x[rows] @ self.A.T + self.c, self.log_scale.exp()).to_event(1))


def test_stl_and_dreg_scale_a_subsampled_gradient_once():
    # at k = 1 both are the ELBO's pathwise gradient (v = 1), times N / B: equal on the same draws. STL's is
    # one surrogate times the scale; DReG's path term reaches z through the model's backward pass, which
    # already carries the scale (once it was applied twice: 2.5 times too large here)
    x = LinearGaussian().sample_x(10).double()
    vae = SubsampledLinearGaussianVAE(guide_shift=0.3, guide_scale=1.5)
    gradients = []
    for name in ESTIMATORS:
        pyro.set_rng_seed(0)
        vae.zero_grad()
        make_objective(name, 1).loss_and_grads(vae.model, vae.guide, x)
        gradients.append([p.grad.clone() for p in vae.parameters()])
    for stl, dreg in zip(*gradients):
        torch.testing.assert_close(dreg, stl)


class SharedOffsetVAE(SubsampledLinearGaussianVAE):
    """
    The subsampled model with a prior p(z) = N(c, I) whose mean is the guide's offset ``c``:
    a parameter of both, as a VampPrior's encoder is. ``subsample_size`` rows per step.
    """

    def __init__(self, subsample_size):
        super().__init__(guide_shift=0.3, guide_scale=1.5)
        self.subsample_size = subsample_size

    def model(self, x):
        pyro.module("linear_gaussian", self)
        with pyro.plate("data", x.shape[0], subsample_size=self.subsample_size) as rows:
            z = pyro.sample("z", dist.Normal(self.c, 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1), obs=x[rows])

    def guide(self, x):
        pyro.module("linear_gaussian", self)
        with pyro.plate("data", x.shape[0], subsample_size=self.subsample_size) as rows:
            pyro.sample("z", dist.Normal(x[rows] @ self.A.T + self.c, self.log_scale.exp()).to_event(1))

    def log_densities(self, x, z, model_detached=False, guide_detached=True):
        """
        ``log p(x, z)`` and ``log q(z | x)``, ``[k, B]``, written out with torch.distributions; the
        model's or the guide's parameters detached (their own dependence stopped, ``z``'s kept).
        """
        b, c = (self.b.detach(), self.c.detach()) if model_detached else (self.b, self.c)
        log_p = torch.distributions.Normal(c, 1.0).log_prob(z).sum(-1)
        log_p = log_p + torch.distributions.Normal(z @ self.W.T + b, self.sigma).log_prob(x).sum(-1)
        loc, scale = x @ self.A.T + self.c, self.log_scale.exp()
        if guide_detached:
            loc, scale = loc.detach(), scale.detach()
        return log_p, torch.distributions.Normal(loc, scale).log_prob(z).sum(-1)


@pytest.mark.parametrize("subsample_size", [10, 4])
@pytest.mark.parametrize("objective", ESTIMATORS)
def test_a_parameter_of_both_model_and_guide_gets_both_parts_scaled_once(objective, subsample_size):
    """
    Against the gradients written out on the estimator's own draws (``z = loc + scale eps``, the rows it
    subsampled), with ``v`` the normalized weights and ``N / B`` the plate's scale:

        STL:   N/B sum_l v_l (log p(x, z_l) - log q_stop(z_l))
        DReG:  N/B sum_l (v_l log p(x, stop(z_l)) + v_l^2 (log p_stop(x, z_l) - log q_stop(z_l)))

    where ``_stop`` stops a density's own parameters. The prior's mean ``c`` is also the guide's
    offset: it gets the model's part (through p's mean) and the path's (through z); dropping either,
    or scaling either twice, fails here.
    """
    x = LinearGaussian().sample_x(10).double()
    vae = SharedOffsetVAE(subsample_size)
    drawn = []

    def recorded_guide(x):
        trace = poutine.trace(vae.guide).get_trace(x)
        drawn.append((trace.nodes["z"]["value"].detach(), trace.nodes["data"]["value"]))

    pyro.set_rng_seed(0)
    vae.zero_grad()
    make_objective(objective, 3).loss_and_grads(vae.model, recorded_guide, x)
    ours = {name: p.grad.clone() for name, p in vae.named_parameters()}

    # the first call in the particle plate draws (one before it finds the plates' nesting, one after it at
    # the same z)
    z, rows = next((z, rows) for z, rows in drawn if z.dim() == 3)
    assert z.shape == (3, subsample_size, 2)
    x_rows = x[rows]
    loc, scale = x_rows @ vae.A.T + vae.c, vae.log_scale.exp()
    z_path = loc + scale * ((z - loc) / scale).detach()  # the same values, differentiable in A, c, log_scale
    log_p, log_q = vae.log_densities(x_rows, z_path)
    v = (log_p - log_q).detach().softmax(0)
    if objective == "iwae-stl":
        surrogate = (v * (log_p - log_q)).sum()
    else:
        log_p_fixed_z, _ = vae.log_densities(x_rows, z_path.detach())
        log_p_stopped, _ = vae.log_densities(x_rows, z_path, model_detached=True)
        surrogate = (v * log_p_fixed_z + v**2 * (log_p_stopped - log_q)).sum()
    vae.zero_grad()
    (-x.shape[0] / subsample_size * surrogate).backward()
    for name, p in vae.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, msg=name)
    # the prior's part of c's gradient is not negligible: the test tells it apart
    vae.zero_grad()
    log_p_fixed_z, _ = vae.log_densities(x_rows, z_path.detach())
    (v * log_p_fixed_z).sum().backward()
    assert vae.c.grad.abs().max() > 0.1 * ours["c"].abs().max()


class NestedPlateNormal:
    """
    ``x`` ``[N, D]`` given a latent ``z``, ``x ~ N(z, 1)`` per feature, with a feature plate at dim -2
    inside the data plate; ``z ~ N(0, 1)`` one per data point (``[N]``, the observation in the feature
    plate) or one per data point and feature (``[D, N]`` in the feature plate, the observation a
    ``pyro.factor`` outside it). The guide ``N(a x + b, exp(c))`` has its latent where the model does.
    The gradients are written out in ``[k, D, N]`` tensors.
    """

    def __init__(self, x, latent_per_feature):
        self.x, self.latent_per_feature = x, latent_per_feature
        self.a, self.b, self.c = (torch.tensor(value, dtype=x.dtype, requires_grad=True) for value in (0.1, -0.2, -0.3))

    def guide_loc(self):
        """``[D, N]`` or ``[1, N]``."""
        features = self.x.T if self.latent_per_feature else self.x.sum(-1, keepdim=True).T
        return self.a * features + self.b

    def model(self, x):
        features = pyro.plate("features", x.shape[1], dim=-2)
        with pyro.plate("data", x.shape[0]):
            if self.latent_per_feature:  # the observation outside the feature plate, summed over it by hand
                with features:
                    z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
                pyro.factor("x", dist.Normal(z, 1.0).log_prob(x.T).sum(-2, keepdim=True))
            else:
                z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
                with features:
                    pyro.sample("x", dist.Normal(z, 1.0), obs=x.T)

    def guide(self, x):
        loc, scale = self.guide_loc(), self.c.exp()
        with pyro.plate("data", x.shape[0]):
            with pyro.plate("features", x.shape[1], dim=-2) if self.latent_per_feature else contextlib.nullcontext():
                pyro.sample("z", dist.Normal(loc if self.latent_per_feature else loc.squeeze(-2), scale))

    def hand_gradients(self, objective, z):
        """The gradients of ``a, b, c`` written out at the guide's draws ``z`` (Tucker et al., eq. 5 for DReG)."""
        num_particles = z.shape[0]
        z = z.reshape(num_particles, -1, self.x.shape[0])  # [k, D or 1, N]
        loc, scale = self.guide_loc(), self.c.exp()
        z_path = loc + scale * ((z - loc) / scale).detach()
        log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z_path).sum(-2)
        log_p = log_prior + torch.distributions.Normal(z_path, 1.0).log_prob(self.x.T).sum(-2)  # [k, N]
        log_q = torch.distributions.Normal(loc.detach(), scale.detach()).log_prob(z_path).sum(-2)
        v = (log_p - log_q).detach().softmax(0)
        power = 2 if objective == "iwae-dreg" else 1
        (-(v**power * (log_p - log_q)).sum()).backward()
        return [parameter.grad for parameter in (self.a, self.b, self.c)]


@pytest.mark.parametrize("latent_per_feature", [False, True])
@pytest.mark.parametrize("objective", ESTIMATORS)
def test_guide_gradient_with_a_plate_inside_the_data_plate(objective, latent_per_feature):
    """
    With a plate nested in the data plate the latent is ``[k, 1, N]`` or ``[k, D, N]``: each particle's
    weight must meet its own samples (once DReG's ``v`` was put at the wrong dims, mixing data points, or
    failed to broadcast).
    """
    x = LinearGaussian().sample_x(4)[:, :3]
    model = NestedPlateNormal(x, latent_per_feature)
    drawn = []

    def recorded_guide(x):
        drawn.append(poutine.trace(model.guide).get_trace(x).nodes["z"]["value"].detach())

    pyro.set_rng_seed(0)
    make_objective(objective, 5, max_plate_nesting=2).backward(model.model, recorded_guide, x)
    ours = [parameter.grad.clone() for parameter in (model.a, model.b, model.c)]
    for parameter in (model.a, model.b, model.c):
        parameter.grad = None
    for mine, hand in zip(ours, model.hand_gradients(objective, drawn[0])):
        torch.testing.assert_close(mine, hand)
