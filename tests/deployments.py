"""Helpers for tests that run a real local deployment (server/deploy/local.py)."""

from __future__ import annotations

import threading
from pathlib import Path

from server.demo import site_plan
from server.deploy.local import LocalConsortium


def submit_in_background(c: LocalConsortium, config: dict, timeout: float) -> tuple[threading.Thread, dict]:
    """``c.submit(config)`` on a thread, so the test can act while the run goes on; the dict gets ``run`` (the
    Flower run id) or ``error`` (what ``submit`` raised, with the run's log) when it ends."""
    result: dict = {}

    def submit() -> None:
        try:
            result["run"] = c.submit(config, timeout=timeout)
        except Exception as exc:  # noqa: BLE001  (the test reports it)
            result["error"] = exc

    runner = threading.Thread(target=submit)
    runner.start()
    return runner, result


def make_sites_here(out: Path, n_sites: int, images: int, image_size: int, seed: int) -> list[Path]:
    """The ``site.toml`` of each of ``server.demo.make_sites``' sites (the same folders, formats, names and seed,
    under ``out/sites``), synthesised and indexed (what `fedchest-site check` does) in this process. The demo runs
    the site CLI in two subprocesses per site, each importing torch and the rest again: 2-3 minutes for three
    80-image sites on a loaded 2-core machine, most of a deployment test's set-up."""
    from client.index import prepare_site
    from client.site_config import load_site_config
    from client.synth import synthesize_site

    tomls = []
    for fmt, name, folder in site_plan(n_sites):
        toml = synthesize_site(out / "sites" / folder, fmt, name, images, image_size, seed)
        prepare_site(load_site_config(toml))
        tomls.append(toml)
    return tomls
