"""privacy_audit: the empirical lower bound on DP-SGD's epsilon (one-run canary audit against the coordinator,
shared_models/privacy/audit.py) next to the accountant's upper bound, for sigma in {0.5, 1, 2}; several runs per
sigma (each run's noise is fresh from the OS CSPRNG), and the same audit with the seeded-noise bug of issue 21
reintroduced (the site's seeds derived from the run seed: hashed with a counter, run seed plus a counter, or the run
seed itself), which must come out as a violation."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import record
from shared_models.privacy import audit
from shared_models.privacy.audit import AuditConfig, run_audit

SIGMAS = (0.5, 1.0, 2.0)
SEEDS = (0, 1, 2, 3, 4)
CANARIES, SAMPLE_RATE, STEPS, DELTA = 2000, 0.05, 100, 1e-5


def _seeded_bug(cfg: AuditConfig, derivation: str) -> dict:
    with audit.seed_source(audit.seeds_from_run(cfg.seed, derivation)):
        return run_audit(cfg).as_dict()


def run(work_dir: Path) -> dict:
    secure, bug = {}, {}
    for sigma in SIGMAS:
        runs = [run_audit(AuditConfig(sigma, SAMPLE_RATE, STEPS, CANARIES, delta=DELTA, seed=s)).as_dict()
                for s in SEEDS]
        secure[f"{sigma:g}"] = runs
        bug[f"{sigma:g}"] = {d: _seeded_bug(AuditConfig(sigma, SAMPLE_RATE, STEPS, CANARIES, delta=DELTA,
                                                         seed=SEEDS[0]), d) for d in audit.SEED_DERIVATIONS}
        lows = [r["epsilon_lower"] for r in runs]
        print(f"sigma {sigma:g}: upper {runs[0]['epsilon_upper_rdp']:.3f} (RDP) / {runs[0]['epsilon_upper_prv']:.3f} "
              f"(PRV); lower {', '.join(f'{x:.3f}' for x in lows)}; seeded-noise bug: "
              + "; ".join(f"{d}: lower {r['epsilon_lower']:.3f}, {r['verdict']}" for d, r in bug[f"{sigma:g}"].items()),
              flush=True)
    headline = {}
    for key, runs in secure.items():
        headline[f"sigma={key} eps upper (PRV / RDP)"] = (f"{runs[0]['epsilon_upper_prv']:.3f} / "
                                                         f"{runs[0]['epsilon_upper_rdp']:.3f}")
        headline[f"sigma={key} eps lower, 95% (max of {len(runs)} runs)"] = max(r["epsilon_lower"] for r in runs)
        headline[f"sigma={key} verdicts"] = "all consistent" if all(r["consistent"] for r in runs) else "VIOLATION"
        hashed = bug[key]["hashed"]
        headline[f"sigma={key} seeded-noise bug (hashed seeds): eps lower / verdict"] = (
            f"{hashed['epsilon_lower']:.3f} / {hashed['verdict']}")
        headline[f"sigma={key} seeded-noise bug: derivations flagged"] = (
            f"{sum(not r['consistent'] for r in bug[key].values())} of {len(bug[key])}")
    figures = {"config": {"canaries": CANARIES, "sample_rate": SAMPLE_RATE, "steps": STEPS, "delta": DELTA,
                          "confidence": 0.95, "max_grad_norm": 1.0, "lr": 1.0},
               "secure": secure, "seeded_noise_bug": bug, "headline": headline}
    return {"privacy_audit": record(figures, "python -m benchmarks.run --only privacy_audit (or per row: fedchest "
                                             f"privacy-audit --sigmas S --canaries {CANARIES} --steps {STEPS} "
                                             f"--sample-rate {SAMPLE_RATE} --seed N)", seeds=list(SEEDS))}
