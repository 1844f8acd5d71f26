"""Progress of long local work: plain periodic lines when the stream is not a terminal, a bar when it is, and
nothing of it in what a site returns (training stats become the reply's metrics) or in a CLI's JSON on stdout."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from client.cli import main
from client.index import load_split
from client.training import train_local
from shared_models.networks import build_model
from shared_models.progress import Progress, track


def test_plain_lines_when_not_a_terminal(monkeypatch):
    monkeypatch.setenv("FEDCHEST_PROGRESS_SECONDS", "0")
    stream = io.StringIO()  # isatty() is False: a log file
    with Progress("check site-a: decode", 4, "files", stream=stream) as progress:
        for i in range(4):
            progress.update(1, rejected=i // 2)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5, lines  # one per update at interval 0, then the final one
    assert lines[0].startswith("[progress] check site-a: decode: 1/4 files (") and "ETA" in lines[0]
    assert "rejected 0" in lines[0] and "rejected 1" in lines[3]
    assert lines[-1].startswith("[progress] check site-a: decode: 4/4 files (") and lines[-1].endswith(" done")
    assert all("\r" not in line and "\x1b" not in line for line in lines)  # no bar control characters


def test_short_work_is_silent_and_the_switch_turns_it_off(monkeypatch):
    stream = io.StringIO()
    for _ in track(range(50), "predict", stream=stream, interval=3600):
        pass
    assert stream.getvalue() == ""
    monkeypatch.setenv("FEDCHEST_PROGRESS", "0")
    with Progress("x", 3, stream=stream, interval=0) as progress:
        progress.update(3)
    assert stream.getvalue() == ""


def test_a_terminal_gets_a_bar(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    with Progress("local training round 2", 3, "batches", stream=stream, interval=0) as progress:
        for _ in range(3):
            progress.update(1, loss=0.5)
    text = stream.getvalue()
    assert "local training round 2" in text and "/3 " in text and "\r" in text  # tqdm redraws in place
    assert "[progress]" not in text


def test_bad_interval_is_named(monkeypatch):
    monkeypatch.setenv("FEDCHEST_PROGRESS_SECONDS", "soon")
    with pytest.raises(ValueError, match="FEDCHEST_PROGRESS_SECONDS='soon'"):
        Progress("x", 1, stream=io.StringIO())


def test_training_reports_progress_locally_and_returns_only_its_stats(padchest_site, monkeypatch, capsys):
    monkeypatch.setenv("FEDCHEST_PROGRESS_SECONDS", "0")
    data = load_split(padchest_site, "train")
    model = build_model("tiny", 8)
    stats = train_local(model, data, epochs=2, lr=1e-3, batch_size=16, device=torch.device("cpu"), progress_round=3)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[progress] local training round 3: ")]
    batches = 2 * sum(1 for s in range(0, len(data), 16) if len(data) - s >= 2)
    assert len(lines) == batches + 1 and "epoch 2/2" in lines[-1] and "loss " in lines[-1]
    assert set(stats) == {"train_loss", "steps", "train_seconds"}  # what becomes the reply's metrics
    assert np.isfinite(stats["train_loss"])


def test_check_json_on_stdout_stays_pure(padchest_site, monkeypatch, capsys):
    monkeypatch.setenv("FEDCHEST_PROGRESS_SECONDS", "0")
    code = main(["check", "--config", str(padchest_site.path), "--json"])
    out = capsys.readouterr()
    assert code == 0
    json.loads(out.out)  # progress never mixes into the machine-readable output
    assert "[progress] check" in out.err and "decode" in out.err and "scan" in out.err
