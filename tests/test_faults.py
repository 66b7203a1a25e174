"""A training process killed mid-epoch loses nothing: --resume gives the numbers of an uninterrupted run."""

import csv
import json
import signal
import subprocess
import sys
import time

from conftest import ROOT


def command(data_dir, out, device, *extra):
    flags = [
        "--objective",
        "iwae",
        "--particles",
        "3",
        "--epochs",
        "3",
        "--train-size",
        "3000",
        "--test-size",
        "40",
        "--eval-particles",
        "20",
        "--no-plots",
        "--no-progress",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--device",
        str(device),
    ]
    return [sys.executable, str(ROOT / "examples" / "mnist.py"), *flags, *extra]


def history(out):
    with open(out / "history.csv") as f:
        return list(csv.DictReader(f))


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, data_dir, device):
    straight = tmp_path / "straight"
    subprocess.run(command(data_dir, straight, device), check=True, capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    process = subprocess.Popen(command(data_dir, killed, device), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # history.csv appears (by a rename) after epoch 1's checkpoint: kill at once, in epoch 2, which
    # cannot finish within one poll (its 150 steps take a second or more, a poll 0.01 s)
    deadline = time.monotonic() + 300
    try:
        while not (killed / "history.csv").exists():
            assert process.poll() is None and time.monotonic() < deadline, "epoch 1 did not finish"
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    finished = history(killed)
    assert len(finished) == 1, "the kill was meant to land in epoch 2"
    assert not (killed / "metrics.json").exists()
    assert not [p.name for p in killed.iterdir() if p.name.endswith(".tmp")]  # no half-written file is left

    subprocess.run(command(data_dir, killed, device, "--resume"), check=True, capture_output=True, timeout=600)
    resumed = history(killed)
    assert resumed[0] == finished[0]
    # the same optimizer and random states: the same losses as the run that was never stopped
    # (to the bit on one thread, which conftest.py sets for every test)
    assert [row["loss"] for row in resumed] == [row["loss"] for row in history(straight)]
    metrics = [json.loads((out / "metrics.json").read_text()) for out in (straight, killed)]
    assert metrics[0]["test_log_likelihood"] == metrics[1]["test_log_likelihood"]
