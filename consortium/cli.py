"""`fedchest`: what a consortium admin runs."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from consortium.simulation import quiet_flower_env
from shared_models.losses import LOSSES

SYNTHETIC_DEMO = {"rounds": 10, "preset": "small", "local_epochs": 2, "lr": 0.001}


def _real_demo(args: argparse.Namespace) -> int:
    from consortium.real_demo import REAL_RECIPE, RealDataMissing, run_real_demo

    other = [flag for flag, on in (("--dp", args.dp), ("--secagg", args.secagg), ("--zeroshot", args.zeroshot),
                                   ("--box-latent", args.box_latent), ("--ct-sites", args.ct_sites),
                                   ("--trcgl", args.trcgl), ("--localizer", args.localizer),
                                   ("--tail-synthesis", args.tail_synthesis)) if on]
    if other:
        print(f"fedchest demo: --real trains the routed experts on the NIH images; {', '.join(other)} not with --real "
              "yet (NIH has no reports for the zero-shot branch, no CT and no lesion boxes for most images)",
              file=sys.stderr)
        return 2
    chosen = {"rounds": args.rounds, "preset": args.preset, "local-epochs": args.local_epochs, "lr": args.lr,
              "weight-decay": args.weight_decay, "loss": args.loss}
    recipe = {**REAL_RECIPE, **{k: v for k, v in chosen.items() if v is not None}}  # the flags given win
    try:
        run_real_demo(Path(args.out), recipe["rounds"], args.seed, recipe["preset"], args.image_size,
                      recipe["local-epochs"], recipe["lr"], args.verbose,
                      weight_decay=recipe["weight-decay"], loss=recipe["loss"])
    except RealDataMissing as exc:
        print(f"fedchest demo: {exc}", file=sys.stderr)
        return 2
    return 0


def _demo(args: argparse.Namespace) -> int:
    from consortium.demo import run_demo

    if args.real:
        return _real_demo(args)
    if args.weight_decay is not None or args.loss is not None:
        print("fedchest demo: --weight-decay and --loss apply to --real (the synthetic demo keeps the run config's "
              "defaults)", file=sys.stderr)
        return 2
    for key, value in SYNTHETIC_DEMO.items():  # flags not given: the synthetic demo's defaults
        if getattr(args, key) is None:
            setattr(args, key, value)
    extra = {}
    if args.box_latent and (args.secagg or args.dp):
        print("fedchest demo: --box-latent follows a plain run (its head has no DP-SGD or SecAgg+ path yet)",
              file=sys.stderr)
        return 2
    if args.ct_sites and args.secagg:
        print("fedchest demo: --ct-sites needs per-group aggregation over the CT sites, which SecAgg+ cannot do",
              file=sys.stderr)
        return 2
    if args.zeroshot:
        if args.secagg:
            print("fedchest demo: --zeroshot needs federated evaluation, which the SecAgg+ demo does not run",
                  file=sys.stderr)
            return 2
        if args.dp:
            print("fedchest demo: --zeroshot's evaluation summaries have no noised release under DP (a DP site sends "
                  "them only with [privacy] dp_exact_evaluation = true in its site.toml)", file=sys.stderr)
            return 2
        extra = {"zeroshot": True, "zeroshot-proxy-classes": args.proxy_classes,
                 "zeroshot-image-encoder": "separate" if args.dp else "experts"}  # DP-SGD needs the separate one
    if (args.localizer or args.tail_synthesis) and (args.dp or args.secagg):
        print("fedchest demo: --localizer and --tail-synthesis have no DP-SGD or SecAgg+ path yet", file=sys.stderr)
        return 2
    if args.trcgl and args.secagg:
        print("fedchest demo: --trcgl's label graph needs the sites' co-occurrence counts, which the SecAgg+ apps do "
              "not carry", file=sys.stderr)
        return 2
    if args.tail_synthesis and args.zeroshot:
        print("fedchest demo: --tail-synthesis cannot be combined with --zeroshot yet", file=sys.stderr)
        return 2
    if args.dp:
        extra["dp-eval-noise-multiplier"] = args.dp_eval_noise_multiplier
    if args.trcgl:
        extra.update({"se": True, "csra-heads": 2, "label-graph": True, "label-graph-noise": args.label_graph_noise})
    if args.localizer:
        extra["localizer"] = True
    if args.tail_synthesis:
        extra["tail-synthesis"] = True
    run_demo(Path(args.out), args.sites, args.rounds, args.images_per_site, args.image_size, args.seed,
             args.preset, args.local_epochs, args.lr, args.verbose, dp=args.dp,
             noise_multiplier=args.dp_noise_multiplier, max_grad_norm=args.dp_max_grad_norm, secagg=args.secagg,
             extra=extra, box_rounds=args.box_latent_rounds if args.box_latent else 0, ct_sites=args.ct_sites)
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    app = Path(__file__).resolve().parent.parent / "dashboards" / "app.py"
    env = {**os.environ, "FEDCHEST_DB_URL": args.db} if args.db else dict(os.environ)
    cmd = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port),
           "--server.address", args.address, "--server.headless", "true", "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none", "--theme.base", "light", "--client.toolbarMode", "viewer"]
    print(f"fedchest dashboard: http://{'localhost' if args.address in ('127.0.0.1', '0.0.0.0') else args.address}"
          f":{args.port} (registry {env.get('FEDCHEST_DB_URL', 'sqlite:///demo-out/registry.db')}, read-only)",
          flush=True)
    os.execve(sys.executable, cmd, env)  # streamlit takes this process's place: a SIGTERM to it stops the dashboard
    return 1  # not reached                (with subprocess.call the streamlit server outlived a terminated CLI)


def _certs(args: argparse.Namespace) -> int:
    from server.deploy.certs import CertError, describe, make_ca, make_site_key, make_superlink_cert

    out = Path(args.out)
    try:
        if args.certs_cmd == "init":
            if not (out / "ca.crt").exists():
                make_ca(out)
                print(f"consortium CA: {out / 'ca.crt'} (give this file to every site); key {out / 'ca.key'} "
                      "(mode 0600, keep it offline)")
            make_superlink_cert(out, out, args.name)
            print(describe(out / "superlink.pem"))
            print(f"SuperLink key: {out / 'superlink.key'} (mode 0600)")
        elif args.certs_cmd == "site":
            for site in args.sites:
                private, public = make_site_key(out, site)
                print(f"{site}: private key {private} (mode 0600: send it to the site only), public key {public} "
                      f"(register it: flwr supernode register {public} <connection> --name {site})")
        else:
            for p in sorted(out.glob("*.pem")) + sorted(out.glob("*.crt")):
                print(describe(p))
    except CertError as exc:
        print(f"fedchest certs: {exc}", file=sys.stderr)
        return 2
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from consortium.deploy_local import DeployError, deploy_local

    try:
        deploy_local(Path(args.out), args.sites, args.rounds, args.images_per_site, args.image_size, args.preset,
                     args.local_epochs, args.seed, insecure=args.insecure,
                     persistent_state=args.persistent_link_state, warm=False if args.cold else None)
    except DeployError as exc:
        print(f"fedchest deploy local: {exc}", file=sys.stderr)
        return 2
    return 0


def _run_resume(args: argparse.Namespace) -> int:
    """Submit a new Flower run that continues a registry run (server/resume.py does the work in the ServerApp)."""
    import json

    from server.registry import Registry, RegistryUnavailable, resolve_db_url

    try:
        registry = Registry(resolve_db_url(args.db))
    except RegistryUnavailable as exc:
        print(f"fedchest run resume: {exc}", file=sys.stderr)
        return 2
    run = registry.get_run(args.run_id)
    if run is None:
        print(f"fedchest run resume: run {args.run_id} is not in {registry.url}", file=sys.stderr)
        return 2
    if run["status"] == "completed":
        print(f"fedchest run resume: run {args.run_id} is already completed", file=sys.stderr)
        return 2
    cfg = json.loads(run["config_json"])
    done = registry.checkpoints(args.run_id)
    print(f"resuming run {args.run_id} ({run['name']}): last checkpoint round "
          f"{done[0][0] if done else 'none'} of {run['num_rounds']}", flush=True)
    if args.connection:
        import tempfile

        from consortium.deploy_local import staged_app_dir

        items = f'resume-run="{args.run_id}" out-dir={json.dumps(str(cfg["out-dir"]))}'
        with tempfile.TemporaryDirectory(prefix="fedchest-app-") as tmp:  # the FAB's files only (fast to pack)
            app = staged_app_dir(Path(tmp) / "app")
            return subprocess.call([str(Path(sys.executable).parent / "flwr"), "run", str(app), args.connection,
                                    "--run-config", items, "--stream"])
    if not cfg.get("sim-sites-dir"):
        print("fedchest run resume: the run was not a simulation; give --connection NAME (the SuperLink "
              "connection in $FLWR_HOME/config.toml)", file=sys.stderr)
        return 2
    from consortium.simulation import run_in_process

    sites = len(list(Path(cfg["sim-sites-dir"]).glob("*/site.toml")))
    run_in_process({**cfg, "resume-run": args.run_id}, num_supernodes=sites, verbose=args.verbose)
    run = registry.get_run(args.run_id)
    print(f"run {args.run_id}: {run['status']}")
    return 0 if run["status"] == "completed" else 1


def _privacy_audit(args: argparse.Namespace) -> int:
    """The canary audit of DP-SGD (shared_models/privacy/audit.py); exit 1 when a row is a violation."""
    import json

    from shared_models.privacy.audit import AuditConfig, run_audit, table

    try:
        sigmas = [float(s) for s in args.sigmas.split(",")]
    except ValueError:
        print(f"fedchest privacy-audit: --sigmas {args.sigmas!r}; expected comma-separated numbers", file=sys.stderr)
        return 2
    try:
        configs = [AuditConfig(s, args.sample_rate, args.steps, args.canaries, delta=args.delta, seed=args.seed)
                   for s in sigmas]
    except ValueError as exc:
        print(f"fedchest privacy-audit: {exc}", file=sys.stderr)
        return 2
    results = [run_audit(c) for c in configs]
    print(json.dumps([r.as_dict() for r in results], indent=1) if args.json else table(results))
    return 0 if all(r.consistent for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    quiet_flower_env()
    sys.stdout.reconfigure(line_buffering=True)  # progress shows up live when piped
    p = argparse.ArgumentParser(prog="fedchest", description="fedchest consortium tools")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo",
                       help="synthetic (or, with --real, real NIH) consortium + federated simulation, end to end")
    d.add_argument("--out", required=True)
    d.add_argument("--real", action="store_true",
                   help="three sites of real NIH ChestX-ray14 radiographs split by patient (FEDCHEST_REAL_DATA, else "
                        "../shared/data/real) instead of synthetic ones (--sites and --images-per-site do not apply)")
    d.add_argument("--sites", type=int, default=3)
    d.add_argument("--rounds", type=int, default=None, help="default 10 (--real: the real recipe's)")
    d.add_argument("--images-per-site", type=int, default=1000)
    d.add_argument("--image-size", type=int, default=64)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--preset", default=None, help="default small (--real: the real recipe's)")
    d.add_argument("--local-epochs", type=int, default=None, help="default 2 (--real: the real recipe's)")
    d.add_argument("--lr", type=float, default=None, help="default 0.001 (--real: the real recipe's)")
    d.add_argument("--weight-decay", type=float, default=None, help="--real only (default: the real recipe's)")
    d.add_argument("--loss", choices=LOSSES, default=None, help="--real only: asl | bce (default: the real recipe's)")
    d.add_argument("--verbose", action="store_true", help="show Flower's own log lines")
    d.add_argument("--dp", action="store_true", help="train under DP-SGD at every site (each keeps a privacy ledger)")
    d.add_argument("--dp-noise-multiplier", type=float, default=1.0)
    d.add_argument("--dp-max-grad-norm", type=float, default=1.0)
    d.add_argument("--dp-eval-noise-multiplier", type=float, default=2.0,
                   help="with --dp: noise multiplier of each round's evaluation release (0: sites withhold it)")
    d.add_argument("--secagg", action="store_true",
                   help="secure aggregation (Flower SecAgg+): weighted FedAvg of masked updates, no federated "
                        "evaluation")
    d.add_argument("--zeroshot", action="store_true",
                   help="train the zero-shot image-text branch too and score the held-out classes every round")
    d.add_argument("--proxy-classes", default="Nodule,pleural thickening",
                   help="with --zeroshot: seen classes hidden from the ASL branch, scored zero-shot for model "
                        "selection")
    d.add_argument("--box-latent", action="store_true",
                   help="then train the box-latent head on the run's final experts, frozen (a second federated run)")
    d.add_argument("--box-latent-rounds", type=int, default=5)
    d.add_argument("--ct-sites", type=int, default=0,
                   help="add synthetic chest-CT sites; the run trains the CT vision-language model there (ct = true)")
    d.add_argument("--trcgl", action="store_true",
                   help="TRCGL-Net's parts on the experts: squeeze-and-excitation, CSRA (2 heads), the label graph")
    d.add_argument("--label-graph-noise", type=float, default=0.0,
                   help="with --trcgl: sites release their co-occurrence counts with this Gaussian noise multiplier")
    d.add_argument("--localizer", action="store_true",
                   help="train the prompt-driven localiser too; box AP@0.5 and mIoU every round")
    d.add_argument("--tail-synthesis", action="store_true",
                   help="each site trains a text-conditioned diffusion model and adds tail-class images locally")
    d.set_defaults(fn=_demo)
    b = sub.add_parser("dashboard", help="start the Streamlit dashboard on the registry")
    b.add_argument("--db", help="SQLAlchemy URL (default: FEDCHEST_DB_URL)")
    b.add_argument("--port", type=int, default=8501)
    b.add_argument("--address", default="127.0.0.1",
                   help="interface to listen on (default: this machine only; 0.0.0.0 for every interface)")
    b.set_defaults(fn=_dashboard)
    c = sub.add_parser("certs", help="consortium CA, SuperLink TLS certificate, site keys for node authentication")
    csub = c.add_subparsers(dest="certs_cmd", required=True)
    ci = csub.add_parser("init", help="create the CA (if absent) and the SuperLink certificate")
    ci.add_argument("--out", required=True, help="folder for ca.crt, ca.key, superlink.pem, superlink.key")
    ci.add_argument("--name", action="append", default=[],
                    help="a DNS name or IP address hospitals dial (repeatable); loopback is always added")
    cs = csub.add_parser("site", help="an ECDSA key pair per site (OpenSSH format) for SuperNode authentication")
    cs.add_argument("sites", nargs="+")
    cs.add_argument("--out", required=True)
    cshow = csub.add_parser("show", help="subject, SANs and expiry of the certificates in a folder")
    cshow.add_argument("--out", required=True)
    c.set_defaults(fn=_certs)
    r = sub.add_parser("run", help="registry runs")
    rsub = r.add_subparsers(dest="run_cmd", required=True)
    rr = rsub.add_parser("resume", help="continue a run that died (ServerApp or SuperLink killed) after its last "
                                        "complete round, under the same registry run")
    rr.add_argument("run_id")
    rr.add_argument("--db", required=True, help="the registry (SQLAlchemy URL or SQLite path)")
    rr.add_argument("--connection", help="SuperLink connection for `flwr run` (default: simulation, as the run was)")
    rr.add_argument("--verbose", action="store_true")
    rr.set_defaults(fn=_run_resume)
    dep = sub.add_parser("deploy", help="deployments")
    dsub = dep.add_subparsers(dest="deploy_cmd", required=True)
    dl = dsub.add_parser("local", help="SuperLink + N SuperNodes as processes on this machine (TLS, node auth), "
                                       "one run with flwr run, then stop them all")
    dl.add_argument("--sites", type=int, default=3)
    dl.add_argument("--out", required=True)
    dl.add_argument("--rounds", type=int, default=2)
    dl.add_argument("--images-per-site", type=int, default=200)
    dl.add_argument("--image-size", type=int, default=64)
    dl.add_argument("--preset", default="tiny")
    dl.add_argument("--local-epochs", type=int, default=1)
    dl.add_argument("--seed", type=int, default=0)
    dl.add_argument("--insecure", action="store_true",
                    help="no TLS and no node authentication (testing only; must be asked for explicitly)")
    dl.add_argument("--persistent-link-state", action="store_true",
                    help="keep the SuperLink's Flower state in DIR/deployment/superlink.db (SQLite) instead of in "
                         "memory; slower under load, and only Flower's own records survive in it: fedchest's "
                         "registry and checkpoints survive either way")
    dl.add_argument("--cold", action="store_true",
                    help="no warm ClientApp workers: Flower's fresh flwr-clientapp process per message (for "
                         "comparison; "
                         "FEDCHEST_WARM=0 does the same)")
    dl.set_defaults(fn=_deploy)
    pa = sub.add_parser("privacy-audit", help="empirical lower bound on a site's DP-SGD epsilon (canary audit), next "
                                              "to the accountant's upper bound (docs/privacy-audit.md)")
    pa.add_argument("--sigmas", default="0.5,1,2", help="noise multipliers, comma-separated")
    pa.add_argument("--canaries", type=int, default=1000)
    pa.add_argument("--steps", type=int, default=100)
    pa.add_argument("--sample-rate", type=float, default=0.05)
    pa.add_argument("--delta", type=float, default=1e-5)
    pa.add_argument("--seed", type=int, default=0, help="the run seed (known to the coordinator) and the canary coins")
    pa.add_argument("--json", action="store_true")
    pa.set_defaults(fn=_privacy_audit)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
