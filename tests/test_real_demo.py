"""`fedchest demo --real`: the NIH consortium split by patient, the nih source's `patients` option, and (e2e) a
short federated run on the real radiographs scored afterwards by `fedchest-site evaluate` at a site."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from client.index import prepare_site
from client.site_config import load_site_config
from consortium.cli import main as admin_main
from consortium.real_demo import NIH_TABLE, REAL_ENV, SITES, assign_patients, write_site
from tests.conftest import REPO


def _table(real: Path) -> pd.DataFrame:
    on_disk = {p.name for p in (real / "nih64").glob("*.png")}
    df = pd.read_csv(real / NIH_TABLE, usecols=["Image Index", "Patient ID", "View Position"], dtype=str)
    return df[df["Image Index"].isin(on_disk)]


@pytest.mark.real
def test_sites_split_by_patient_with_different_case_mixes(real_data):
    sites = assign_patients(real_data)
    assert list(sites) == list(SITES)
    seen: dict[str, str] = {}
    for site, patients in sites.items():
        for p in patients:
            assert p not in seen, f"patient {p} at {seen.get(p)} and {site}"
            seen[p] = site
    table = _table(real_data)
    assert set(seen) == set(table["Patient ID"])  # every patient with an image is at exactly one site
    views = {site: table[table["Patient ID"].isin(ps)]["View Position"].value_counts(normalize=True).to_dict()
             for site, ps in sites.items()}
    assert views["outpatient-pa"] == {"PA": 1.0}
    assert views["icu-ap"]["AP"] > 0.7 and 0.05 < views["general-mixed"].get("AP", 0) < 0.5
    assert sites == assign_patients(real_data)  # deterministic for a seed
    assert sites != assign_patients(real_data, seed=1)


@pytest.mark.real
def test_nih_patients_option_restricts_the_site(real_data, tmp_path):
    table = _table(real_data)
    patients = sorted(table["Patient ID"].unique(), key=int)[:12]
    toml = write_site(tmp_path / "site", "twelve-patients", real_data, "nih64", patients, 32)
    report = prepare_site(load_site_config(toml))
    expected = table[table["Patient ID"].isin(patients)]
    assert report.indexed == len(expected)
    # the other 168 patients' files on disk are not this site's: no "not listed" rejection for them
    assert not [r for r in report.rejected if "no nih table lists" in r.reason]
    assert all("missing on disk" in r.reason for r in report.rejected)  # those patients' images not in nih64


@pytest.mark.real
def test_an_empty_patients_list_is_a_clear_rejection(real_data, tmp_path):
    toml = write_site(tmp_path / "site", "nobody", real_data, "nih64", [], 32)
    report = prepare_site(load_site_config(toml))
    assert report.indexed == 0
    assert any("patients.txt" in r.path and "`patients` list is empty" in r.reason for r in report.rejected)


def test_demo_real_without_the_data_names_both_places(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(REAL_ENV, str(tmp_path / "nowhere"))
    assert admin_main(["demo", "--real", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere") in err and REAL_ENV in err and str(Path("shared") / "data" / "real") in err


def test_real_accuracy_benchmark_skips_without_the_data(tmp_path, monkeypatch, capsys):
    from benchmarks.bench_real_accuracy import run

    monkeypatch.setenv(REAL_ENV, str(tmp_path / "nowhere"))
    assert run(tmp_path / "bench") == {}
    out = capsys.readouterr().out
    assert "real_accuracy: skipped" in out and str(tmp_path / "nowhere") in out


def test_demo_real_takes_the_real_recipe_and_the_flags_given(tmp_path, monkeypatch):
    import consortium.real_demo as real_demo

    seen = {}
    monkeypatch.setattr(real_demo, "run_real_demo", lambda out, *a, **kw: seen.update(args=a, kw=kw))
    assert admin_main(["demo", "--real", "--out", str(tmp_path), "--lr", "0.003"]) == 0
    rounds, _seed, preset, _size, epochs, lr, _verbose = seen["args"]
    recipe = real_demo.REAL_RECIPE
    assert (rounds, preset, epochs, lr) == (recipe["rounds"], recipe["preset"], recipe["local-epochs"], 0.003)
    assert seen["kw"] == {"weight_decay": recipe["weight-decay"], "loss": recipe["loss"]}
    assert admin_main(["demo", "--out", str(tmp_path), "--loss", "bce"]) == 2  # synthetic demo: --real only


def test_demo_real_refuses_the_synthetic_only_options(tmp_path, capsys):
    assert admin_main(["demo", "--real", "--zeroshot", "--out", str(tmp_path)]) == 2
    assert "--zeroshot not with --real" in capsys.readouterr().err


@pytest.mark.e2e
@pytest.mark.real
def test_demo_real_short_run_then_evaluate_at_a_site(real_data, tmp_path):
    out = tmp_path / "demo-real"
    env = {**os.environ, REAL_ENV: str(real_data), "PYTHONPATH": str(REPO), "FLWR_TELEMETRY_ENABLED": "0"}
    r = subprocess.run([sys.executable, "-m", "consortium.cli", "demo", "--real", "--out", str(out), "--rounds", "2",
                        "--preset", "tiny", "--image-size", "32", "--local-epochs", "1"],
                       capture_output=True, text=True, env=env, timeout=900, cwd=REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["rounds_completed"] == 2 and s["synthetic"] is False and s["sites"] == sorted(SITES)
    assert (out / "registry.db").exists() and len(list((out / "checkpoints").glob("round-*.pt"))) == 2
    for rnd in s["rounds"]:
        lo, hi = rnd["pooled_ci"]["mAUC"]
        assert 0 <= lo <= rnd["pooled"]["mAUC"] <= hi <= 1
        assert set(rnd["sites"]) == set(SITES)
    assert "pooled mAUC [95% CI]" in r.stdout and "real NIH" in r.stdout
    patients = {site: set((out / "real-sites" / f"{i:02d}-{site}" / "patients.txt").read_text().split())
                for i, site in enumerate(SITES)}
    assert not (patients[SITES[0]] & patients[SITES[1]] or patients[SITES[0]] & patients[SITES[2]]
                or patients[SITES[1]] & patients[SITES[2]])
    ckpt = out / "checkpoints" / "round-002.pt"
    site = out / "real-sites" / "01-icu-ap" / "site.toml"
    scores = tmp_path / "scores.csv"
    r = subprocess.run([sys.executable, "-m", "client.cli", "evaluate", "--checkpoint", str(ckpt), "--config",
                        str(site), "--scores", str(scores), "--json"], capture_output=True, text=True, env=env,
                       timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["all"]["scored_classes"] >= 3 and 0 <= result["all"]["mAUC"] <= 1
    assert set(result["by_projection"]) == {"PA", "AP"}
    rows = scores.read_text().splitlines()
    assert len(rows) == 1 + result["all"]["images"] and rows[1].split(",")[0].endswith(".png")


@pytest.mark.real
def test_pinned_split_salts_make_the_real_sites_held_out_patients_reproducible(real_data, tmp_path, monkeypatch):
    """real_accuracy's seeds: the same salt key gives the same held-out images at every site in a fresh folder,
    another key other ones (the random per-site secret gave a different split in every fresh folder)."""
    import consortium.real_demo as real_demo
    from client.index import load_split, sample_paths
    from client.site_config import pin_split_salt

    monkeypatch.setenv(REAL_ENV, str(real_data))

    def held_out(folder: Path, key: int) -> list[list[str]]:
        sites = real_demo.make_real_sites(folder, 32, seed=0, pin_salt=pin_split_salt, salt_key=key)
        cfgs = [load_site_config(p) for p in sorted(sites.glob("*/site.toml"))]
        return [sorted(Path(p).name for p in sample_paths(c, load_split(c, "test").rows)) for c in cfgs]

    first = held_out(tmp_path / "a", 1)
    assert len(first) == len(SITES) and all(first)
    assert held_out(tmp_path / "b", 1) == first
    assert held_out(tmp_path / "c", 2) != first
    with pytest.raises(ValueError, match="go together"):
        real_demo.make_real_sites(tmp_path / "d", 32, seed=0, salt_key=1)
