"""The harness's sites: synthetic sites in real formats, made and checked by the site CLI's own code.

``fedchest demo``, ``fedchest deploy local``, the benchmarks and the tests make their sites with `fedchest-site
synth --check` (and `fedchest-site check`), as a hospital would run them. Small sites are made in this process
(``client.cli.main``, its printout captured): a site-CLI process's start-up (torch, timm and the project: 4-8 s
of CPU on 2 cores) costs more than synthesising and indexing a few hundred small images (0.7 s for 120 images at
32 px). Sites with more pixels than ``IN_PROCESS_MAX_PIXELS`` in all go to two site-CLI processes side by side.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FORMATS = ("padchest", "mimic", "openi", "dicom")
SITE_NAMES = {"padchest": "alicante-general", "mimic": "boston-icu", "openi": "indiana-outpatient",
              "dicom": "pacs-export"}
# Above this many pixels over all sites (images x side^2; e.g. 3 x 400 images at 64 px is 4.9 M) two processes
# side by side beat one: each site's synthesis then takes several seconds, more than a process start-up.
IN_PROCESS_MAX_PIXELS = 4_000_000
CT_SHAPE, CT_SPACING = "32,32,32", "6,6,6"  # the run's default CT grid: no resampling needed


def site_cli(*args: str) -> subprocess.CompletedProcess:
    """`fedchest-site ARGS` in a process of its own."""
    return subprocess.run([sys.executable, "-m", "client.cli", *args], capture_output=True, text=True)


def site_cli_here(*args: str) -> subprocess.CompletedProcess:
    """`fedchest-site ARGS` in this process, its output captured as a process's would be. A usage error
    (argparse's exit) is exit code 2 with its message; any other exception is a fedchest bug and propagates."""
    from client.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return subprocess.CompletedProcess(["fedchest-site", *args], code or 0, out.getvalue(), err.getvalue())


def site_plan(n_sites: int) -> list[tuple[str, str, str]]:
    """(format, site name, folder name) of each of ``make_sites``' sites, known before they are made (``fedchest
    deploy local`` starts each site's warm worker, named by its folder, while the sites are synthesised)."""
    plan = []
    for i in range(n_sites):
        fmt = FORMATS[i % len(FORMATS)]
        name = SITE_NAMES[fmt] + (f"-{i // len(FORMATS) + 1}" if i >= len(FORMATS) else "")
        plan.append((fmt, name, f"{i:02d}-{name}"))
    return plan


def make_sites(out: Path, n_sites: int, images: int, image_size: int, seed: int,
               held_out_rate: float = 0.0, real_structure: bool = False) -> Path:
    """``n_sites`` synthetic sites under ``out/sites``, made and checked by `fedchest-site synth --check`
    (reused when the parameters match); ``held_out_rate`` and ``real_structure`` as its options."""
    sites_dir = out / "sites"
    params = {"sites": n_sites, "images": images, "image_size": image_size, "seed": seed,
              "generator": 2}  # 2: reports describe held-out findings without naming them
    if held_out_rate:
        params["held_out_rate"] = held_out_rate
    if real_structure:
        params["real_structure"] = True
    options = (["--held-out-rate", f"{held_out_rate:g}"] if held_out_rate else []) + (
        ["--real-structure"] if real_structure else [])
    stamp = sites_dir / "demo-params.json"
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        print(f"reusing synthetic sites in {sites_dir}")
        return sites_dir
    shutil.rmtree(sites_dir, ignore_errors=True)
    sites_dir.mkdir(parents=True)
    jobs = [(fmt, name, sites_dir / folder) for fmt, name, folder in site_plan(n_sites)]
    in_process = n_sites * images * image_size ** 2 <= IN_PROCESS_MAX_PIXELS
    cli = site_cli_here if in_process else site_cli
    t0 = time.perf_counter()

    def synth_and_check(job):
        fmt, name, folder = job
        r = cli("synth", "--out", str(folder), "--format", fmt, "--name", name, "--images", str(images),
                "--image-size", str(image_size), "--seed", str(seed), *options, "--check")
        if r.returncode:
            raise RuntimeError(f"fedchest-site synth --check failed for {name}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
        return next((line for line in r.stdout.splitlines() if line.startswith("site ")), r.stdout.strip())

    if in_process:  # one after the other: the captured output is this process's
        lines = [synth_and_check(job) for job in jobs]
    else:
        with ThreadPoolExecutor(max_workers=2) as pool:  # one site-CLI process per site
            lines = list(pool.map(synth_and_check, jobs))
    for (fmt, _name, _), line in zip(jobs, lines):
        print(f"[{fmt}] " + line)
    print(f"made {n_sites} synthetic sites in {time.perf_counter() - t0:.1f}s "
          f"({'in this process' if in_process else 'two site-CLI processes'})")
    stamp.write_text(json.dumps(params))
    return sites_dir


def make_ct_sites(out: Path, n_sites: int, seed: int, volumes: int = 160) -> Path:
    """Synthetic CT sites (ct-rate and dicom-ct layouts in turn) under ``out/ct-sites``, each checked, in this
    process (reused when the parameters match)."""
    ct_dir = out / "ct-sites"
    params = {"sites": n_sites, "volumes": volumes, "shape": CT_SHAPE, "spacing": CT_SPACING, "seed": seed}
    stamp = ct_dir / "demo-params.json"
    if stamp.exists() and json.loads(stamp.read_text()) == params:
        print(f"reusing synthetic CT sites in {ct_dir}")
        return ct_dir
    shutil.rmtree(ct_dir, ignore_errors=True)
    for i in range(n_sites):
        fmt = ("ct-rate", "dicom-ct")[i % 2]
        folder = ct_dir / f"{i:02d}-ct-{fmt}"
        r = site_cli_here("synth", "--out", str(folder), "--format", fmt, "--name", f"chest-ct-{i + 1}", "--images",
                          str(volumes), "--ct-shape", CT_SHAPE, "--ct-spacing", CT_SPACING,
                          "--seed", str(seed + 100 + i))
        if r.returncode:
            raise RuntimeError(f"fedchest-site synth failed for CT site {i + 1}:\n{r.stderr[-2000:]}")
        r = site_cli_here("check", "--config", str(folder / "site.toml"))
        if r.returncode:
            raise RuntimeError(f"fedchest-site check failed for CT site {i + 1}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
        print(f"[{fmt}] " + r.stdout.splitlines()[0])
    stamp.write_text(json.dumps(params))
    return ct_dir
