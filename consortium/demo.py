"""`fedchest demo`: a synthetic consortium end to end (sites in real formats, Flower simulation, registry).

The sites are made and checked by the site CLI's code, as hospitals would (consortium/sites.py); the federated run
goes through Flower's simulation runtime. Figures are from synthetic data: they show the machinery works and are
not clinical results.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from server.report import fmt
from consortium.simulation import CLIENT_APP, SECAGG_APPS, SERVER_APP, run_in_process
from consortium.sites import make_ct_sites, make_sites
from server.zeroshot_eval import PROMPT_SETS
from shared_models.messages import SYNTH_IMAGES, TRAIN_LOSS

HELD_OUT_RATE = 0.10  # zero-shot demo: each held-out finding at 10 %, ~20 per 200-image test split (at 6 % a
# 400-image site's test split often held fewer than min_count = 5 of a class, so the site withheld it)


def run_demo(out: Path, n_sites: int = 3, rounds: int = 10, images: int = 1000, image_size: int = 64,
             seed: int = 0, preset: str = "small", local_epochs: int = 2, lr: float = 0.001,
             verbose: bool = False, dp: bool = False, noise_multiplier: float = 1.0, max_grad_norm: float = 1.0,
             secagg: bool = False, extra: dict | None = None, box_rounds: int = 0, ct_sites: int = 0) -> dict:
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    print("fedchest demo: SYNTHETIC consortium; figures show the machinery works, not clinical performance.\n")
    zeroshot = bool((extra or {}).get("zeroshot"))
    if zeroshot:
        print(f"zero-shot demo: each held-out finding is planted at {HELD_OUT_RATE:.0%} of images (real-world rates "
              "are 0.2-3 %), so every prompt family has positives to score at every site\n")
    sites_dir = make_sites(out, n_sites, images, image_size, seed, held_out_rate=HELD_OUT_RATE if zeroshot else 0.0)
    ct_dir = make_ct_sites(out, ct_sites, seed) if ct_sites else None
    summary_path = out / "summary.json"
    summary_path.unlink(missing_ok=True)
    run_config = {
        "num-server-rounds": rounds, "local-epochs": local_epochs, "lr": lr, "batch-size": 32,
        "model-preset": preset, "image-size": image_size, "label-set": "cxrlt2026", "fraction-train": 1.0,
        "min-nodes": n_sites + ct_sites, "round-timeout": 1800.0, "out-dir": str(out),
        "sim-sites-dir": f"{sites_dir},{ct_dir}" if ct_dir else str(sites_dir),
        "run-name": f"demo-{n_sites}sites-{rounds}rounds" + ("-dp" if dp else ""), "seed": seed,
        "dp": dp, "dp-noise-multiplier": noise_multiplier, "dp-max-grad-norm": max_grad_norm,
        **({"ct": True} if ct_sites else {}),
        **(extra or {}),
    }
    t0 = time.perf_counter()
    if secagg:  # Flower's SecAgg+ (legacy API): plain weighted FedAvg, masked sums only
        run_config.update({"aggregation": "fedavg", "secagg-max-weight": float(images)})
    run_in_process(run_config, num_supernodes=n_sites + ct_sites, cpus_per_client=1.0, verbose=verbose,
                   apps=SECAGG_APPS if secagg else (SERVER_APP, CLIENT_APP))
    if not summary_path.exists():
        raise RuntimeError(f"the federated run wrote no {summary_path}; see the log above")
    summary = json.loads(summary_path.read_text())
    summary["demo_wall_seconds"] = time.perf_counter() - t0
    summary_path.write_text(json.dumps(summary, indent=1))
    if secagg:
        print("\n=== fedchest demo (secure aggregation, SecAgg+) finished: synthetic data ===")
        print(f"run {summary['run_id']}: {summary['rounds_completed']} rounds; train loss per round: "
              + ", ".join(f"{h[TRAIN_LOSS]:.3f}" for h in summary["rounds"]))
        print(f"final model: {summary['checkpoints']} (evaluate it with `fedchest-site predict` at a site)")
        return summary
    if not summary["rounds"]:
        print("\n=== fedchest demo finished (synthetic data): no evaluation summary was released ===")
        print(f"run {summary['run_id']}: {summary['rounds_completed']} rounds; every site withheld its evaluation "
              "(DP sites do unless the run asks for a noised release or their policy allows exact summaries)")
        return summary
    first, last = summary["rounds"][0]["pooled"], summary["rounds"][-1]["pooled"]
    print("\n=== fedchest demo finished (synthetic data, not clinical results) ===")
    print(f"run {summary['run_id']}: {summary['rounds_completed']} rounds, sites {', '.join(summary['sites'])}")
    # fmt: a round whose every class was withheld at every site (small test splits) has no pooled figures
    print(f"pooled mAP: round 1 {fmt(first['mAP'])} -> round {summary['rounds_completed']} {fmt(last['mAP'])} "
          f"(constant predictor {fmt(summary['baseline']['prevalence_mAP'])}); mAUC {fmt(last['mAUC'])}")
    if summary.get("privacy"):
        last_round = max(summary["privacy"], key=int)
        spent = ", ".join(f"{site} {v['epsilon']:.2f}" for site, v in sorted(summary["privacy"][last_round].items()))
        delta = next(iter(summary["privacy"][last_round].values()))["delta"]
        print(f"privacy: DP-SGD (noise {noise_multiplier:g}, clip {max_grad_norm:g}); epsilon spent after round "
              f"{last_round} at delta {delta:g}, every charged release included (training, the sites' released "
              f"counts, noised evaluation summaries): {spent}")
    if summary.get("zeroshot") and summary["zeroshot"].get("last"):
        zs = summary["zeroshot"]
        print("zero-shot, held-out classes never in any training label (pooled; 95 % bootstrap interval):")
        for name, entry in zs["last"].items():
            p, ci, npos = entry["pooled"]["all"], entry["ci"].get("mAUC", [None, None]), entry["n_pos"]
            scored = ", ".join(f"{c} {n}" for c, n in npos.items() if n) or "none (too few positives at every site)"
            print(f"  {name:<12} mAUC {fmt(p['mAUC'])} [{fmt(ci[0])}, {fmt(ci[1])}]  mAP {fmt(p['mAP'])}"
                  f"  (positives scored: {scored})")
        print(zero_shot_site_lines(zs["last"]))
        scored = sum(zs["last"]["descriptive"]["n_pos"].values())
        if scored < 30:
            print(f"  only {scored} held-out positives were scored: too few for these figures to mean much (at "
                  "1,000 images per site they swing widely between runs; try --images-per-site 3000)")
        if zs.get("selected_round"):
            print(f"  model selection on the proxy classes: round {zs['selected_round']} "
                  f"(proxy mAUC {zs['selected_proxy_mAUC']:.3f})")
    if summary.get("ct") and summary["ct"].get("last"):
        from server.report import ct_lines

        print("chest CT model at the CT site(s) (synthetic phantoms; the tiny preset on a 32^3 grid):")
        print(ct_lines(summary["ct"]["last"]))
    if summary["config"].get("tail-synthesis"):
        print(tail_synthesis_line(summary))
    if summary.get("localization") and summary["localization"].get("last"):
        from server.report import loc_line

        ckpt = sorted(Path(summary["checkpoints"]).glob("round-*.pt"))[-1]
        print("prompt localiser (synthetic lesion boxes; box AP at IoU 0.5, mean IoU of the top box):")
        print(loc_line(summary["localization"]["last"]))
        print(f"  boxes for a prompt at a site: .venv/bin/fedchest-site localize IMAGE \"pleural effusion\" "
              f"--checkpoint {ckpt} --out overlay.png")
    if box_rounds:
        summary["box_latent"] = run_box_demo(out, sites_dir, summary, box_rounds, n_sites, verbose)
        summary_path.write_text(json.dumps(summary, indent=1))
    print(f"summary:     {summary_path}")
    print(f"registry:    {summary['db_url']}")
    print(f"checkpoints: {summary['checkpoints']}")
    print(f"dashboard:   .venv/bin/fedchest dashboard --db {summary['db_url']}  (then open http://localhost:8501)")
    return summary


def zero_shot_site_lines(last: dict) -> str:
    """Per site, each prompt family's mAUC [95 % bootstrap interval] on the held-out classes and the positives it
    was scored on, both from the score histograms the site released (as the pooled figures); a site that released
    none says so."""
    fams = [f for f in PROMPT_SETS if f in last]
    lines = ["  per site (mAUC [95 % bootstrap interval] over the held-out classes the site released):"]
    for site in last[fams[0]]["sites"]:
        n_pos = {c: n for c, n in last[fams[0]].get("site_n_pos", {}).get(site, {}).items() if n}
        if not n_pos:
            lines.append(f"    {site:<20} none released (a site sends no figure for a class its labels cannot "
                         "express or that has fewer than its min_count test positives)")
            continue
        figures = []
        for f in fams:
            ci = last[f]["site_ci"][site].get("mAUC", [None, None])
            figures.append(f"{f} {fmt(last[f]['site_released'][site]['mAUC'])} [{fmt(ci[0])}, {fmt(ci[1])}]")
        lines.append(f"    {site:<20} " + "; ".join(figures) + f"  ({sum(n_pos.values())} positives of "
                     f"{len(n_pos)} classes)")
    return "\n".join(lines)


def tail_synthesis_line(summary: dict) -> str:
    """How many synthetic tail-class images each site made (its first round's report, from the registry)."""
    from sqlalchemy import text

    from server.registry import Registry

    with Registry(summary["db_url"]).engine.connect() as con:
        made = dict(con.execute(text("SELECT site, value FROM metrics WHERE run_id = :r AND name = :name "
                                     "ORDER BY round DESC"), {"r": summary["run_id"], "name": SYNTH_IMAGES}).fetchall())
    if not any(made.values()):
        return ("tail synthesis: no site had a tail class (consortium prevalence under 1 %) with enough positives of "
                "its own to learn from, so no image was made (try --images-per-site 2000)")
    return "tail synthesis: synthetic tail-class images used in local training: " + ", ".join(
        f"{site} {int(n)}" for site, n in sorted(made.items()))


def run_box_demo(out: Path, sites_dir: Path, main: dict, rounds: int, n_sites: int, verbose: bool) -> dict:
    """A second federated run: the box-latent head on the first run's final routed experts, frozen, into the same
    registry; prints macro-AUROC per N, Brier, ECE and OOD AUROC with their intervals."""
    from server.report import box_line

    backbone = sorted(Path(main["checkpoints"]).glob("round-*.pt"))[-1]
    box_out = out / "box-latent"
    (box_out / "summary.json").unlink(missing_ok=True)
    cfg = main["config"]
    run_config = {
        "num-server-rounds": rounds, "local-epochs": 2, "lr": 0.003, "batch-size": 64,
        "model-preset": cfg["model-preset"],
        "image-size": cfg["image-size"], "label-set": cfg["label-set"], "min-nodes": n_sites, "round-timeout": 1800.0,
        "out-dir": str(box_out), "db-url": main["db_url"], "sim-sites-dir": str(sites_dir), "seed": cfg["seed"],
        "run-name": f"demo-box-latent-{rounds}rounds", "box-latent": True, "box-backbone-weights": str(backbone),
    }
    print(f"\n--- box-latent head on the frozen routed experts of {backbone.name} ({rounds} rounds) ---")
    t0 = time.perf_counter()
    run_in_process(run_config, num_supernodes=n_sites, cpus_per_client=1.0, verbose=verbose)
    path = box_out / "summary.json"
    if not path.exists():
        raise RuntimeError(f"the box-latent run wrote no {path}; see the log above")
    summary = json.loads(path.read_text())
    print(f"\n=== box-latent run {summary['run_id']} ({time.perf_counter() - t0:.0f}s; synthetic data) ===")
    last = summary["box"]["last"]
    if last:
        last["by_samples"] = {int(k): v for k, v in last["by_samples"].items()}
        last["primary"] = int(last["primary"])
        print(box_line(last))
    ckpt = sorted(Path(summary["checkpoints"]).glob("round-*.pt"))[-1]
    site = sorted(sites_dir.glob("*/site.toml"))[0]
    print(f"draft report at a site: .venv/bin/fedchest-site predict IMAGE --checkpoint {ckpt} --config {site} --report")
    return {"summary": str(path), "run_id": summary["run_id"], "checkpoint": str(ckpt)}
