"""A registry made like `make demo`'s, for the dashboard, box-latent and zero-shot tests, and what each dashboard
page must show on each of its runs.

The registry holds three real federated runs, each from the demo CLI at a small size (one round of one local epoch,
400 images per site, 32 px, the tiny preset): `make demo`'s own command line (three radiograph sites with PA / AP /
lateral views and the zero-shot branch, one chest-CT site, then two rounds of the box-latent run on the first
run's experts), and a run under DP-SGD at two sites, written into the same registry (``FEDCHEST_DB_URL``). The DP
run keeps the run config's default ``dp-eval-noise-multiplier = 0``: its sites withhold every evaluation summary,
so the pages that need one must say why they have nothing to show. 400 images per site give the zero-shot
held-out classes (planted at 10 %) test positives at the PadChest and Open-i sites. Built once per test session
(tests/conftest.py, once_per_session) and read by test_dashboard_demo, test_dashboard_browser, test_box_run and
test_zeroshot_e2e, which only read it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO, once_per_session

SIZE = ["--rounds", "1", "--local-epochs", "1", "--images-per-site", "400", "--image-size", "32", "--preset", "tiny",
        "--seed", "2"]
# `make demo`'s flags (Makefile), two rounds of the box-latent run (test_box_run compares its first and last)
MAKE_DEMO = ["--zeroshot", "--box-latent", "--ct-sites", "1", "--box-latent-rounds", "2"]
DP_RUN = ["--dp", "--dp-eval-noise-multiplier", "0", "--sites", "2"]  # the run config's default


@dataclass(frozen=True)
class DemoRegistry:
    url: str
    runs: dict[str, str]  # kind ("main", "box", "dp") -> run id
    radiograph_sites: tuple[str, ...]  # the main run's radiograph sites (its CT site left out)
    ct_sites: tuple[str, ...]
    dp_epsilon: dict[str, float]  # the DP run's epsilon per site after its round, from its summary.json
    main_out: str  # the make-demo run's --out folder (summary.json, sites/, checkpoints/, box-latent/)
    main_log: str  # its printout (stdout + stderr)

    @classmethod
    def from_dict(cls, d: dict) -> "DemoRegistry":
        return cls(d["url"], d["runs"], tuple(d["radiograph_sites"]), tuple(d["ct_sites"]), d["dp_epsilon"],
                   d["main_out"], d["main_log"])


def _demo(out: Path, flags: list[str], env: dict[str, str]) -> dict:
    r = subprocess.run([sys.executable, "-m", "consortium.cli", "demo", "--out", str(out), *flags, *SIZE],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=1800)
    assert r.returncode == 0, f"fedchest demo {' '.join(flags)} failed:\n{r.stdout[-2000:]}{r.stderr[-3000:]}"
    (out / "demo.log").write_text(r.stdout + r.stderr)
    return json.loads((out / "summary.json").read_text())


def build(root: Path) -> DemoRegistry:
    """The three runs into one registry under ``root``."""
    main = _demo(root / "make-demo", MAKE_DEMO, dict(os.environ))
    dp = _demo(root / "dp", DP_RUN, {**os.environ, "FEDCHEST_DB_URL": main["db_url"]})
    assert dp["db_url"] == main["db_url"]
    ct, radiograph = (tuple(sorted(_site_name(p) for p in (root / "make-demo" / d).glob("*/site.toml")))
                      for d in ("ct-sites", "sites"))
    last = max(dp["privacy"], key=int)
    return DemoRegistry(main["db_url"], {"main": main["run_id"], "box": main["box_latent"]["run_id"],
                                         "dp": dp["run_id"]}, radiograph, ct,
                        {site: v["epsilon"] for site, v in dp["privacy"][last].items()},
                        str(root / "make-demo"), (root / "make-demo" / "demo.log").read_text())


def _site_name(site_toml: Path) -> str:
    import tomllib

    return tomllib.loads(site_toml.read_text())["site"]["name"]


def shared(tmp_path_factory) -> DemoRegistry:
    """The session's demo registry, built once."""
    return DemoRegistry.from_dict(once_per_session(tmp_path_factory, "demo-registry",
                                                   lambda root: build(root).__dict__))


@dataclass(frozen=True)
class Expect:
    """What a page must show for a run: texts (subheaders, notes), at least ``charts`` charts and ``frames``
    tables; ``empty``: the run lacks the page's family, so the page shows its note and no chart or table."""

    texts: tuple[str, ...]
    charts: int = 0
    frames: int = 0
    empty: bool = False


def _absent(note: str) -> Expect:
    return Expect((note,), empty=True)


_NO_CT = _absent("This run has no CT results")
_NO_LOC = _absent("This run has no localiser results")
_NO_DP = _absent("did not train under differential privacy")
_NO_BOX = _absent("This run has no box-latent head")
_OVERVIEW = Expect(("Pooled consortium metrics per round", "mAP per site (each on its own test split)"), 2)
def _sites(rnd: int) -> Expect:
    return Expect((f"mAP, round {rnd}: site x projection", "Frontal vs lateral gap over rounds"), 1)


def _classes(rnd: int) -> Expect:
    return Expect((f"AP per class: pooled (all sites), projection all, round {rnd}",), 1, 1)


_SITES, _BOX_SITES = _sites(1), _sites(2)  # the box run has two rounds, the others one
_CLASSES, _BOX_CLASSES = _classes(1), _classes(2)
_GEN = Expect(("mAP: model x evaluating site",), 1)
_HEALTH = Expect(("Durations per site", "Straggler of each round", "Dropouts, errors and rejected updates"), 3, 1)
_RUNS = Expect(("Pick a run and a page in the sidebar",), 0, 1)
_WITHHELD = _absent("No evaluation results: every site that answered trains under differential privacy")

# page slug ("" = the Runs page) -> run kind -> what the page shows
EXPECTED: dict[str, dict[str, Expect]] = {
    "": {"main": _RUNS, "box": _RUNS, "dp": _RUNS},
    "overview": {"main": _OVERVIEW, "box": _OVERVIEW, "dp": _WITHHELD},
    "sites": {"main": Expect(_SITES.texts + ("Router accuracy",), 2), "box": _BOX_SITES, "dp": _WITHHELD},
    "classes": {"main": Expect(_CLASSES.texts + ("Zero-shot classes (never in any training label)",
                                                 "The chest-CT sites' classes (their own label set) are on the CT"),
                               1, 2),
                "box": _BOX_CLASSES, "dp": _WITHHELD},
    "generalisation": {"main": _GEN, "box": _GEN, "dp": _WITHHELD},
    "ct": {"main": Expect(("Text-to-volume retrieval (pooled)", "Disease scores and localisation (pooled)",
                           "Per site, round 1", "Per class (pooled), round 1"), 2, 1),
           "box": _NO_CT, "dp": _NO_CT},
    "localization": {"main": _NO_LOC, "box": _NO_LOC, "dp": _NO_LOC},
    "health": {"main": _HEALTH, "box": _HEALTH, "dp": _HEALTH},
    "privacy": {"main": _NO_DP, "box": _NO_DP,
                "dp": Expect(("Epsilon spent per site", "Evaluation summaries of DP sites"), 1, 1)},
    "reliability": {"main": _NO_BOX, "dp": _NO_BOX,
                    "box": Expect(("Pooled over all sites, round 2", "Out-of-distribution detection"), 0, 2)},
}
