import contextlib
import copy
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_iwae.atomic import atomic_open
from pyro_iwae.checkpoints import CheckpointError, RunDirectory, is_snapshot_epoch
from pyro_iwae.importance import DataPlateError
from pyro_iwae.models import ARCHITECTURES, VAE
from pyro_iwae.networks import INITIALIZATIONS
from pyro_iwae.objectives import OBJECTIVES, make_objective, objective_options
from pyro_iwae.training import (
    SCHEDULES,
    TrainingError,
    burda_learning_rates,
    make_optimizer,
    train,
    train_epoch,
    train_step,
)


def test_burda_schedule():
    # Burda et al. (2016), section 5: 3^i epochs at 1e-3 * 10^(-i/7), i = 0..7
    rates = burda_learning_rates()
    assert len(rates) == sum(3**i for i in range(8)) == 3280
    assert rates[0] == 1e-3 and rates[1] == pytest.approx(1e-3 * 10 ** (-1 / 7))
    assert rates[3] == rates[1] and rates[4] == pytest.approx(1e-3 * 10 ** (-2 / 7))
    assert rates[-1] == pytest.approx(1e-4) and rates[-(3**7)] == rates[-1] and rates[-(3**7) - 1] > rates[-1]
    assert SCHEDULES["burda"](1e-3, 4) == rates[:4]
    assert SCHEDULES["burda"](1e-3, None) == rates
    assert SCHEDULES["constant"](3e-4, 3) == [3e-4] * 3


@pytest.mark.parametrize(
    "schedule, epochs, message",
    [("constant", None, "needs a number of epochs"), ("burda", 4000, "has 3280 epochs")],
)
def test_bad_schedules(schedule, epochs, message):
    with pytest.raises(ValueError, match=message):
        SCHEDULES[schedule](1e-3, epochs)


def images(num=60):
    """Three random binary prototypes, each pixel kept with probability 0.95."""
    prototypes = torch.rand(3, 784, generator=torch.Generator().manual_seed(0)).round()
    return (0.05 + 0.9 * prototypes).repeat(num // 3, 1)


def fit(epochs, run_dir=None, resume=False, objective=None, config=None, lr=1e-3, device="cpu", learning_rates=None):
    torch.manual_seed(0)
    vae = VAE().to(device)
    history = train(
        vae,
        objective or make_objective("iwae", 3),
        images(),
        learning_rates or [lr] * epochs,
        batch_size=20,
        run=None if run_dir is None else RunDirectory(run_dir, config or {"k": 3}),
        resume=resume,
        progress=False,
    )
    return vae, history


def test_resume_continues_exactly(tmp_path, device):
    straight, straight_history = fit(3, device=device)
    fit(2, tmp_path, device=device)
    resumed, resumed_history = fit(3, tmp_path, resume=True, device=device)
    assert [row["loss"] for row in resumed_history] == [row["loss"] for row in straight_history]
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_each_epoch_trains_at_its_own_learning_rate(tmp_path):
    """At a rate of 0 Adam leaves the weights as they are: epoch 2 of [1e-2, 0] ends where epoch 1 did."""
    after_one, _ = fit(1, lr=1e-2)
    frozen, history = fit(2, learning_rates=[1e-2, 0.0])
    assert [row["lr"] for row in history] == [1e-2, 0.0]
    assert all(torch.equal(a, b) for a, b in zip(after_one.parameters(), frozen.parameters()))
    # a resumed run takes the schedule up where it stopped
    fit(1, tmp_path, learning_rates=[1e-2])
    resumed, _ = fit(2, tmp_path, resume=True, learning_rates=[1e-2, 0.0])
    assert all(torch.equal(a, b) for a, b in zip(after_one.parameters(), resumed.parameters()))
    trained_on, _ = fit(2, learning_rates=[1e-2, 1e-3])
    assert not all(torch.equal(a, b) for a, b in zip(after_one.parameters(), trained_on.parameters()))


def test_training_lowers_the_loss(device):
    # the untrained decoder predicts p = 0.5 everywhere: 784 log 2 = 543 nats; the data's entropy is 784 H(0.05) = 156
    _, history = fit(5, lr=1e-2, device=device)
    assert history[0]["loss"] == pytest.approx(784 * math.log(2), rel=0.02)
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5]
    assert all(row["seconds"] > 0 for row in history)


def test_resume_refuses_another_configuration(tmp_path):
    fit(1, tmp_path, config={"k": 3, "layers": 1})
    with pytest.raises(CheckpointError, match="k 3 there, 5 here"):
        fit(2, tmp_path, resume=True, config={"k": 5, "layers": 1})
    with pytest.raises(CheckpointError, match="no checkpoint at .*nothing/checkpoint.pt"):
        fit(2, tmp_path / "nothing", resume=True)
    # a path spelled another way is the same path (a checkpoint from before --init-from was normalised)
    fit(1, tmp_path / "started", config={"k": 3, "init_from": "./runs/a/"})
    fit(2, tmp_path / "started", resume=True, config={"k": 3, "init_from": "runs/a"})
    with pytest.raises(CheckpointError, match="init_from 'runs/a' there, 'runs/b' here"):
        fit(2, tmp_path / "started", resume=True, config={"k": 3, "init_from": "runs/b"})
    # a checkpoint from before --init existed was initialised as --init pytorch does
    fit(1, tmp_path / "older", config={"k": 3})
    fit(2, tmp_path / "older", resume=True, config={"k": 3, "init": "pytorch"})
    with pytest.raises(CheckpointError, match="init 'pytorch' there, 'glorot' here"):
        fit(3, tmp_path / "older", resume=True, config={"k": 3, "init": "glorot"})


def test_finished_epochs_are_never_trained_over(tmp_path):
    vae, _ = fit(2, tmp_path)
    kept = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError, match="holds a checkpoint already: continue that run with --resume"):
        fit(3, tmp_path)  # afresh, into the same directory
    with pytest.raises(CheckpointError, match="holds 2 epochs, more than the 1 asked for"):
        fit(1, tmp_path, resume=True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == kept
    (tmp_path / "checkpoint.pt").write_bytes(kept[: len(kept) // 2])  # a damaged copy
    with pytest.raises(CheckpointError, match="checkpoint.pt is not a checkpoint .*, or it is damaged"):
        fit(3, tmp_path, resume=True)


class NaNAt:
    """An objective whose loss and gradients turn NaN at the given (1-based) step."""

    def __init__(self, objective, step):
        self.objective, self.step, self.calls = objective, step, 0

    def backward(self, model, guide, x):
        self.calls += 1
        loss = self.objective.backward(model, guide, x)
        if self.calls != self.step:
            return loss
        for p in model.__self__.parameters():
            p.grad.fill_(math.nan)
        return loss * math.nan


def test_a_nan_loss_stops_training_and_keeps_the_last_checkpoint(tmp_path):
    objective = NaNAt(make_objective("iwae", 3), step=5)  # 3 steps an epoch: epoch 2's second step
    with pytest.raises(
        TrainingError, match=r"at epoch 2, a loss of steps 1 to 3 is not finite \(nan\).*after epoch 1 \(.*pt\) is kept"
    ):
        fit(3, tmp_path, objective=objective)
    assert objective.calls == 6  # training stopped at the epoch's end, its one check
    assert len(torch.load(tmp_path / "checkpoint.pt", weights_only=False)["history"]) == 1


def test_a_nan_step_leaves_the_parameters_and_stops_at_the_next_check():
    torch.manual_seed(0)
    vae = VAE()
    expected = copy.deepcopy(vae)
    batches = images().round().split(5)[:6]
    objective = NaNAt(make_objective("iwae", 3), step=3)
    pyro.set_rng_seed(0)
    with pytest.raises(TrainingError, match="steps 3 to 4 is not finite"):
        train_epoch(vae, objective, make_optimizer(vae.parameters(), lr=1e-3), batches, check_every=2)
    assert objective.calls == 4
    # step 3's NaN gradients reached neither the parameters nor Adam's moments and step count: steps 1, 2 and 4
    # of the same draws give the same parameters
    optimizer, iwae = make_optimizer(expected.parameters(), lr=1e-3), make_objective("iwae", 3)
    pyro.set_rng_seed(0)
    for step, x in enumerate(batches[:4], start=1):
        optimizer.zero_grad()
        iwae.backward(expected.model, expected.guide, x)
        if step != 3:
            optimizer.step()
    for a, b in zip(vae.parameters(), expected.parameters()):
        assert torch.equal(a, b)


def test_a_model_with_a_global_latent_is_refused_before_training():
    def model(x):
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(0.0, scale).expand([784]).to_event(1), obs=x)

    def guide(x):
        pyro.sample("scale", dist.LogNormal(0.0, 1.0))

    module = torch.nn.Linear(1, 1)  # train() needs parameters, and the model and guide as attributes
    module.model, module.guide = model, guide
    with pytest.raises(DataPlateError, match="'scale' is outside"):
        train(module, make_objective("iwae", 3), images(), [1e-3], progress=False)


def test_atomic_writes_leave_the_old_file_on_a_crash(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(path, "w") as f:
        f.write("half of the new")
        raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left
    with atomic_open(path, "w") as f:
        f.write("new")
    assert path.read_text() == "new"


def test_images_outside_the_unit_interval_are_refused():
    vae = VAE()
    with pytest.raises(
        ValueError, match=r"intensities in \[0, 1\].*values in \[12.75, 242.25\].*divide 8-bit images by 255"
    ):
        train(vae, make_objective("iwae", 2), images() * 255, [1e-3], progress=False)


def test_glorot_initialization_is_glorot_and_bengios_uniform_with_zero_biases():
    torch.manual_seed(0)
    mean_pixel = torch.rand(784)
    vae = VAE(*ARCHITECTURES[1], mean_pixel=mean_pixel, guide="iaf")  # the flows' masked layers too
    INITIALIZATIONS["glorot"](vae)
    linears = [m for m in vae.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 11  # 7 of the VAE, 2 in each of the 2 flows
    for linear in linears:
        fan_out, fan_in = linear.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        largest = linear.weight.abs().max().item()
        assert 0.95 * bound < largest <= bound  # nn.Linear's own bound, 1 / sqrt(fan_in), is below 0.95 of it
        assert linear.weight.var().item() == pytest.approx(bound**2 / 3, rel=0.1)  # U(-b, b): variance b^2 / 3
        if linear is not vae.decoder_pixels.logits:
            assert torch.all(linear.bias == 0)
    # the decoder's output bias keeps the logit of the mean pixel (Burda et al.'s code), and is zero without one
    torch.testing.assert_close(vae.decoder_pixels.logits.bias, torch.logit(mean_pixel.clamp(1e-3, 1 - 1e-3)))
    without_mean_pixel = VAE(*ARCHITECTURES[1])
    INITIALIZATIONS["glorot"](without_mean_pixel)
    assert torch.all(without_mean_pixel.decoder_pixels.logits.bias == 0)


def test_optimizer_is_adam_with_the_papers_settings():
    """One step of the fused optimizer against Adam's update written out (Kingma & Ba, 2015, algorithm 1)."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    grad = torch.randn(5, dtype=torch.float64)
    start = p.detach().clone()
    optimizer = make_optimizer([p], lr=0.01)
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.defaults["eps"] == 1e-4
    p.grad = grad.clone()
    optimizer.step()
    m, v = 0.1 * grad / (1 - 0.9), 0.001 * grad**2 / (1 - 0.999)  # bias-corrected moments after one step
    assert torch.allclose(p.detach(), start - 0.01 * m / (v.sqrt() + 1e-4), rtol=1e-12)


@contextlib.contextmanager
def host_reads():
    """The names of the calls that read a tensor's value into Python (each waits for a GPU to finish), in order."""
    reads = []
    originals = {name: getattr(torch.Tensor, name) for name in ("item", "tolist", "__float__", "__int__", "__bool__")}

    def counted(name, read):
        def call(self, *args):
            reads.append(name)
            return read(self, *args)

        return call

    for name, read in originals.items():
        setattr(torch.Tensor, name, counted(name, read))
    try:
        yield reads
    finally:
        for name, read in originals.items():
            setattr(torch.Tensor, name, read)


@contextlib.contextmanager
def cuda_synchronizations(device):
    """On a GPU, the warnings CUDA gives at each synchronization, those no Python call shows included; else none."""
    if device.type != "cuda":
        yield []
        return
    torch.cuda.set_sync_debug_mode("warn")
    synchronizations = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield synchronizations
    finally:
        torch.cuda.set_sync_debug_mode("default")
        synchronizations += [w for w in caught if "synchroniz" in str(w.message)]


@pytest.mark.parametrize(
    "layers, prior, guide, objective",
    [(1, "normal", "normal", name) for name in OBJECTIVES] + [(2, "vamp", "iaf", "iwae"), (2, "mog", "iaf", "elbo")],
)
def test_training_reads_the_loss_only_at_its_checks(layers, prior, guide, objective, device):
    torch.manual_seed(0)
    vae = VAE(*ARCHITECTURES[layers], prior=prior, guide=guide).to(device)
    optimizer = make_optimizer(vae.parameters(), lr=1e-3)
    options = {"num_groups": 2} if "num_groups" in objective_options(objective) else {}
    elbo = make_objective(objective, 4, **options)
    x = images().round().to(device)
    with pyro.validation_enabled(False):  # Pyro's checks read values; examples/mnist.py turns them off (--validate)
        train_step(vae, elbo, optimizer, x[:20])  # the first step guesses the plate nesting
        with host_reads() as reads, cuda_synchronizations(device) as synchronizations:
            train_epoch(vae, elbo, optimizer, x.split(10), check_every=4)  # 6 steps: checks after 4 and 6
    assert reads == ["__float__", "__float__"]
    assert len(synchronizations) == (2 if device.type == "cuda" else 0)


def test_a_pyro_elbo_trains_as_ours_does_reading_each_loss():
    """Pyro's Trace_ELBO (a float from ``loss_and_grads``) and ours (``backward``): the same gradients, to the bit."""
    torch.manual_seed(0)
    ours = VAE()
    theirs = copy.deepcopy(ours)
    batches = images().round().split(10)
    reads = {}
    for name, vae, elbo in (("ours", ours, make_objective("elbo", 1)), ("theirs", theirs, Trace_ELBO())):
        pyro.set_rng_seed(0)
        with pyro.validation_enabled(False), host_reads() as reads[name]:
            train_epoch(vae, elbo, make_optimizer(vae.parameters(), lr=1e-3), batches)
    assert reads["ours"] == ["__float__"]  # the epoch's one check
    assert reads["theirs"].count("item") >= len(batches)  # Trace_ELBO reads every loss
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert torch.equal(a, b)


def test_snapshots_are_spread_on_a_log_scale_at_least_every_n_epochs():
    """Epochs 0-9, every 10th to 90, every 100th to 900, ..., but at least every ``every``: written out by hand."""
    decades = [*range(10), *range(10, 100, 10), *range(100, 1000, 100), 1000, 2000, 3000]
    assert [epoch for epoch in range(3281) if is_snapshot_epoch(epoch, 1000)] == decades
    every_100 = [*range(10), *range(10, 100, 10), *range(100, 3281, 100)]
    assert [epoch for epoch in range(3281) if is_snapshot_epoch(epoch, 100)] == every_100
    assert [epoch for epoch in range(25) if is_snapshot_epoch(epoch, 4)] == [*range(10), 12, 16, 20, 24]
