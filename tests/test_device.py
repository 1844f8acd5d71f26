"""The one place for devices and torch threads (shared_models/device.py)."""

from __future__ import annotations

import pytest
import torch

from shared_models.device import SERVER_THREADS_ENV, limit_threads, server_threads


def test_the_server_runs_on_one_thread_by_default_and_restores_the_count(monkeypatch):
    monkeypatch.delenv(SERVER_THREADS_ENV, raising=False)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with server_threads() as n:
            assert n == 1 and torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        monkeypatch.setenv(SERVER_THREADS_ENV, "3")
        with server_threads():
            assert torch.get_num_threads() == 3
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", ["0", "two", "-1", ""])
def test_a_bad_server_thread_count_says_what_is_expected(monkeypatch, bad):
    monkeypatch.setenv(SERVER_THREADS_ENV, bad)
    with pytest.raises(ValueError, match=f"{SERVER_THREADS_ENV} = {bad!r}: expected a whole number of threads >= 1"):
        with server_threads():
            pass


def test_site_threads_follow_fedchest_threads(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("FEDCHEST_THREADS", "1")
        assert limit_threads() == 1
    finally:
        torch.set_num_threads(before)
