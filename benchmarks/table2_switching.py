"""
Burda et al. (2016), Table 2: a trained model, trained on with the other objective. The paper
continues a converged VAE as an IWAE with k = 50 (its test NLL improves from 86.76 to 84.88) and a
converged IWAE (k = 50) as a VAE (it worsens from 84.78 to 86.02), at lr 1e-4 for 3^7 passes.

For each starting model this runs ``examples/mnist.py --init-from`` three times: with no epochs
(the starting model's own score), with the other objective, and, as a control, with the model's
own objective for the same epochs (each a run directory in ``--runs``), then writes ``table.md``
and ``results.json`` to ``--out``; here from snapshots of the paper-budget runs, which exist only where
they train (``runs/`` is not versioned: elsewhere, any two weights files or run directories)::

    python benchmarks/table2_switching.py --vae runs/full-schedule/mnist-elbo-k1-1layer/weights/epoch-0300.pt \\
        --iwae runs/full-schedule/mnist-iwae-k5-1layer/weights/epoch-0200.pt --epochs 2 --test-size 1000

Each start's objective and k are read from its weights; a run whose ``metrics.json`` exists is
not run again.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from pyro_iwae.checkpoints import read_weights
from pyro_iwae.experiments.cli import at_least, one_line_errors
from pyro_iwae.experiments.outputs import write_json
from pyro_iwae.objectives import OBJECTIVES

ROOT = Path(__file__).resolve().parents[1]
#: Burda et al. (2016), Table 2, MNIST, one stochastic layer: (start, before, after)
PAPER = {"elbo": ("VAE", 86.76, 84.88), "iwae": ("IWAE, k = 50", 84.78, 86.02)}
#: the objective each start switches to, and its k (the paper's)
SWITCH_TO = {"elbo": ("iwae", 50), "iwae": ("elbo", 1)}


def run(out: Path, flags: list[str]) -> dict:
    """``examples/mnist.py`` with ``flags`` into ``out`` (unless finished there; resumed if begun): its metrics."""
    if not (out / "metrics.json").exists():
        resume = ["--resume"] if (out / "checkpoint.pt").exists() else []
        command = [
            sys.executable,
            str(ROOT / "examples" / "mnist.py"),
            *flags,
            *resume,
            "--out",
            str(out),
            "--no-plots",
        ]
        print("+", shlex.join(command), flush=True)
        subprocess.run(command, check=True)
    return json.loads((out / "metrics.json").read_text())


def main(args: argparse.Namespace) -> str:
    out, runs_dir = Path(args.out), Path(args.runs)
    scoring = ["--test-size", str(args.test_size), "--eval-particles", str(args.eval_particles)]
    scoring += ["--data-dir", args.data_dir, "--no-progress"]
    training = ["--epochs", str(args.epochs), "--lr", str(args.lr)]
    if args.train_size is not None:
        training += ["--train-size", str(args.train_size)]
    rows, results = [], []
    for start in (args.vae, args.iwae):
        stored = read_weights(start)
        objective, particles = stored.config["objective"], stored.config["particles"]
        other, other_particles = SWITCH_TO[objective]
        name = f"{objective}-k{particles}-epoch{stored.epoch}"
        own = ["--objective", objective, "--particles", str(particles), "--init-from", str(start), *scoring]
        switched = ["--objective", other, "--particles", str(other_particles), "--init-from", str(start), *scoring]
        runs = {
            "before": run(runs_dir / name, [*own, "--epochs", "0"]),
            "switched": run(runs_dir / f"{name}-as-{other}-k{other_particles}", [*switched, *training]),
            "control": run(runs_dir / f"{name}-as-{objective}-k{particles}", [*own, *training]),
        }
        nll = {key: -metrics["test_log_likelihood"] for key, metrics in runs.items()}
        label, paper_before, paper_after = PAPER[objective]
        rows.append(
            f"| {OBJECTIVES[objective].label}, k = {particles}, {stored.epoch} epochs | {nll['before']:.2f} |"
            f" {OBJECTIVES[other].label}, k = {other_particles}: {nll['switched']:.2f} |"
            f" {OBJECTIVES[objective].label}, k = {particles}: {nll['control']:.2f} |"
            f" {label}: {paper_before:.2f} → {paper_after:.2f} |"
        )
        results.append(dict(start=str(start), epochs_trained_before=stored.epoch, **runs))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {"runs": results})
    stderr = max(m["test_log_likelihood_stderr"] for r in results for m in (r["before"], r["switched"], r["control"]))
    table = "\n".join(
        [
            "# Burda et al. (2016) Table 2: training on with the other objective",
            "",
            f"| start | test NLL | after {args.epochs} epochs with the other objective | after {args.epochs} epochs"
            " with its own (control) | paper (converged start, 3^7 passes) |",
            "| --- | --- | --- | --- | --- |",
            *rows,
            "",
            f"Test NLL in nats, K = {args.eval_particles} on the first {args.test_size} test images (standard error"
            f" over images at most {stderr:.2f} nats; every run is scored on the same images, from the same seed)."
            f" Training: batch 20, Adam at lr {args.lr} from the start's weights with fresh optimiser"
            f" state, dynamically binarized MNIST ({args.train_size or 'all 60,000'} training images)."
            " Command: `python benchmarks/table2_switching.py"
            f" {shlex.join(sys.argv[1:])}`; each run's own command is printed as it starts, and its metrics are in"
            " results.json.",
            "",
        ]
    )
    (out / "table.md").write_text(table)
    return table


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", required=True, help="a trained VAE: run directory, checkpoint or weights file")
    p.add_argument("--iwae", required=True, help="a trained IWAE: run directory, checkpoint or weights file")
    p.add_argument("--epochs", type=at_least(1), default=2, help="epochs to train on (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-4, help="the paper's 1e-4 (default: %(default)s)")
    p.add_argument("--train-size", type=at_least(1), default=None, help="the first N training images (default: all)")
    p.add_argument("--test-size", type=at_least(1), default=1000, help="(default: %(default)s)")
    p.add_argument("--eval-particles", type=at_least(1), default=5000, help="(default: %(default)s)")
    p.add_argument("--data-dir", default="../shared/data", help="(default: %(default)s)")
    p.add_argument("--runs", default="runs/table2", help="where the runs go (default: %(default)s)")
    p.add_argument("--out", default="runs/table2", help="where the table goes (default: %(default)s)")
    return p


if __name__ == "__main__":
    p = parser()
    with one_line_errors(p):
        print(main(p.parse_args()))
