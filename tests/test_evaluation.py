import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import LinearGaussian

from pyro_iwae.evaluation import active_units, log_likelihood, posterior_means, unit_variances
from pyro_iwae.importance import DataPlateError, log_importance_weights
from pyro_iwae.models import ARCHITECTURES, VAE


def test_exact_posterior_gives_exact_log_likelihood():
    # with q = p(z | x) every weight equals p(x), for any K and any chunking
    lg = LinearGaussian()
    x = lg.sample_x(50)
    for chunk in (1, 7, 100):
        estimate = log_likelihood(lg.model, lg.guide, x, num_particles=100, batch_size=16, particle_chunk_size=chunk)
        assert torch.allclose(estimate.log_likelihood, lg.log_marginal(x), atol=1e-9, rtol=0)
        assert torch.allclose(estimate.elbo, lg.log_marginal(x), atol=1e-9, rtol=0)


def test_log_weights_match_hand_computation():
    lg = LinearGaussian(guide_shift=0.4, guide_scale=1.5)
    x = lg.sample_x(8)
    pyro.set_rng_seed(3)
    log_weights = log_importance_weights(lg.model, lg.guide, x, num_particles=6)
    assert log_weights.shape == (6, 8)
    # redraw the same z by hand with the same random stream
    pyro.set_rng_seed(3)
    loc, scale = lg.guide_params(x)
    z = torch.distributions.Normal(loc, scale).rsample((6,))
    normal = torch.distributions.Normal
    expected = (
        normal(0.0, 1.0).log_prob(z).sum(-1)
        + normal(z @ lg.W.T + lg.b, lg.sigma).log_prob(x).sum(-1)
        - normal(loc, scale).log_prob(z).sum(-1)
    )
    assert torch.allclose(log_weights, expected, atol=1e-10)


def test_converges_to_closed_form_log_likelihood():
    # a mis-specified guide: E[L_K] ~ log p(x) - chi2 / (2K), sd(L_K) ~ sqrt(chi2 / K)  (delta method)
    lg = LinearGaussian(guide_shift=0.3, guide_scale=1.3)
    x = lg.sample_x(200)
    num_particles = 5000
    estimate = log_likelihood(lg.model, lg.guide, x, num_particles=num_particles, particle_chunk_size=1000)
    gap = lg.log_marginal(x) - estimate.log_likelihood
    chi_square = lg.chi_square(x)
    assert 0.05 < chi_square.mean() < 5  # the guide is wrong enough for this test to mean something
    expected_gap = (chi_square / (2 * num_particles)).mean()
    standard_error = (chi_square / num_particles).mean().sqrt() / math.sqrt(x.shape[0])
    assert abs(gap.mean() - expected_gap) < 5 * standard_error
    assert gap.abs().max() < 10 * (chi_square.max() / num_particles).sqrt()
    # the ELBO from the same samples matches its closed form log p(x) - KL(q || p(z | x))
    elbo_gap = estimate.elbo - lg.exact_elbo(x)
    sd_log_weight = log_importance_weights(lg.model, lg.guide, x, num_particles=1000).std(0)
    assert (elbo_gap.abs() < 5 * sd_log_weight / math.sqrt(num_particles)).all()


def test_bounds_are_ordered():
    # ELBO <= L_5 <= L_50 <= log p(x), in expectation over data points
    lg = LinearGaussian(guide_shift=0.5, guide_scale=1.6)
    x = lg.sample_x(2000)
    bounds = [log_likelihood(lg.model, lg.guide, x, num_particles=k).log_likelihood for k in (1, 5, 50)]
    bounds.append(lg.log_marginal(x))
    for lower, upper in zip(bounds, bounds[1:]):
        difference = upper - lower
        standard_error = difference.std() / math.sqrt(x.shape[0])
        assert difference.mean() > 4 * standard_error  # strictly tighter, beyond Monte-Carlo noise


def test_chunking_changes_nothing_but_noise():
    lg = LinearGaussian(guide_shift=0.3, guide_scale=1.3)
    x = lg.sample_x(300)
    one_pass = log_likelihood(lg.model, lg.guide, x, num_particles=500, particle_chunk_size=500).log_likelihood
    chunked = log_likelihood(lg.model, lg.guide, x, num_particles=500, particle_chunk_size=37).log_likelihood
    difference = one_pass - chunked
    assert abs(difference.mean()) < 4 * difference.std() / math.sqrt(x.shape[0])


def test_stable_for_many_particles_and_extreme_weights():
    # a guide far from the posterior: log-weights near -1e3 and spread over hundreds of nats
    lg = LinearGaussian(guide_shift=8.0, guide_scale=6.0)
    x = lg.sample_x(3)
    pyro.set_rng_seed(5)
    estimate = log_likelihood(lg.model, lg.guide, x, num_particles=50000, particle_chunk_size=4096)
    pyro.set_rng_seed(5)
    log_weights = torch.cat(
        [
            log_importance_weights(lg.model, lg.guide, x, num_particles=min(4096, 50000 - s))
            for s in range(0, 50000, 4096)
        ]
    )
    assert log_weights.min() < -200 and log_weights.max() - log_weights.min() > 100
    expected = torch.logsumexp(log_weights, 0) - math.log(50000)
    assert torch.isfinite(estimate.log_likelihood).all()
    assert torch.allclose(estimate.log_likelihood, expected, atol=1e-8)
    assert (estimate.log_likelihood <= lg.log_marginal(x) + 1.0).all()


def test_global_latent_is_refused():
    def model(x):
        shift = pyro.sample("shift", dist.Normal(0.0, 1.0))  # outside the data plate
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(shift, 1.0), obs=x)

    def guide(x):
        pyro.sample("shift", dist.Normal(0.0, 1.0))

    with pytest.raises(DataPlateError, match="'shift' is outside pyro.plate"):
        log_likelihood(model, guide, torch.zeros(4), num_particles=10)


@pytest.mark.parametrize("layers", sorted(ARCHITECTURES))
def test_vae_estimate_is_at_least_its_elbo(layers):
    # Jensen on the same draws: log (1/K) sum_l w_l >= (1/K) sum_l log w_l, for every image
    torch.manual_seed(0)
    vae = VAE(*ARCHITECTURES[layers])
    x = torch.bernoulli(torch.full((30, 784), 0.3))
    estimate = log_likelihood(vae.model, vae.guide, x, num_particles=300, batch_size=7, particle_chunk_size=64)
    assert estimate.log_likelihood.shape == estimate.elbo.shape == (30,)
    assert (estimate.log_likelihood >= estimate.elbo).all()
    assert (estimate.log_likelihood < 0).all()


def test_active_units_counts_units_whose_posterior_mean_varies():
    # E_q[z | x] = x * [1, 0.05, 0] + 3: variances over data 1, 0.0025 and 0; threshold 0.01
    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x * torch.tensor([1.0, 0.05, 0.0]) + 3, 1.0).to_event(1))

    x = torch.randn(5000, 3)
    assert active_units(guide, x)["z"].tolist() == [True, False, False]
    # the statistic itself: Var_x of the exact posterior means, the sample variance of x * [1, 0.05, 0]
    expected = (x * torch.tensor([1.0, 0.05, 0.0])).var(0)
    assert torch.allclose(unit_variances(guide, x)["z"], expected, rtol=1e-4)


def test_seeded_posterior_means_of_a_deeper_layer_are_the_same_wherever_computed():
    # z2's mean depends on the z1 drawn below it: a seed makes it one number, and leaves the caller's draws alone
    torch.manual_seed(0)
    vae = VAE(*ARCHITECTURES[2])
    x = torch.bernoulli(torch.full((40, 784), 0.3))
    pyro.set_rng_seed(1)
    first = posterior_means(vae.guide, x, seed=7)
    after_first = torch.rand(3)
    pyro.set_rng_seed(2)
    second = posterior_means(vae.guide, x, seed=7)
    pyro.set_rng_seed(1)
    assert torch.equal(torch.rand(3), after_first)  # the seeded call drew from its own stream
    assert torch.equal(first["z2"], second["z2"]) and torch.equal(first["z1"], second["z1"])
    assert not torch.equal(posterior_means(vae.guide, x, seed=8)["z2"], first["z2"])


def test_masked_sites_do_not_count():
    lg = LinearGaussian()
    x = lg.sample_x(5)

    def model_with_masked_extra(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ lg.W.T + lg.b, lg.sigma).to_event(1), obs=x)
            with pyro.poutine.mask(mask=torch.tensor([True, False, True, False, True])):
                pyro.sample("extra", dist.Normal(0.0, 1.0), obs=torch.full((5,), 2.0, dtype=torch.float64))

    estimate = log_likelihood(model_with_masked_extra, lg.guide, x, num_particles=10)
    extra = torch.distributions.Normal(0.0, 1.0).log_prob(torch.tensor(2.0, dtype=torch.float64))
    expected = lg.log_marginal(x) + extra * torch.tensor([1.0, 0, 1, 0, 1], dtype=torch.float64)
    assert torch.allclose(estimate.log_likelihood, expected, atol=1e-9)
