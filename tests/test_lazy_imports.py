"""The ClientApp's import stays light: a deployed site starts a ClientApp process per message (or forks one from
the warm worker), so the optional heads and heavy libraries are imported by the runs that use them only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("opacus", "scipy.optimize", "pydicom", "transformers", "pandas", "nibabel",
         "client.boxlatent", "client.ct.federated", "client.zeroshot", "client.localization", "client.tail_synthesis",
         "client.dicom_io")


def test_client_app_import_leaves_heavy_modules_out() -> None:
    code = ("import json, sys; import client.client_app; "
            f"print(json.dumps(sorted(m for m in {list(HEAVY)!r} if m in sys.modules)))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_site_cli_makes_and_checks_sites_without_torch() -> None:
    """`fedchest-site synth` and `check` (two processes per site in the demo and deploy local) need no model."""
    code = ("import json, sys; import client.cli, client.index, client.synth; "
            "print(json.dumps(sorted(m for m in ('torch', 'timm', 'opacus', 'scipy.stats') if m in sys.modules)))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
