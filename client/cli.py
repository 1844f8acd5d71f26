"""`fedchest-site`: what a hospital site runs (synthetic data, data checks)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MIN_TRAIN_SAMPLES = 8


def _synth(args: argparse.Namespace) -> int:
    from client.synth import synthesize_site

    toml = synthesize_site(Path(args.out), args.format, args.name or Path(args.out).name, args.images,
                           args.image_size, args.seed, args.label_set)
    print(f"wrote synthetic {args.format} site {toml.parent} ({args.images} images, {args.image_size}px); config {toml}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from client.index import prepare_site
    from client.site_config import SiteConfigError, load_site_config

    try:
        cfg = load_site_config(args.config)
        report = prepare_site(cfg)
    except SiteConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    can_train = report.by_split.get("train", 0) >= MIN_TRAIN_SAMPLES
    reason = "" if can_train else f"fewer than {MIN_TRAIN_SAMPLES} readable training images"
    out = {
        "site": cfg.name,
        "indexed": report.indexed,
        "decoded": report.decoded,
        "reused_from_cache": report.reused,
        "rejected": [{"path": r.path, "reason": r.reason} for r in report.rejected],
        "by_projection": dict(report.by_projection),
        "by_split": dict(report.by_split),
        "by_label": dict(sorted(report.by_label.items(), key=lambda kv: -kv[1])),
        "unmapped_labels": dict(report.unmapped),
        "can_train": can_train,
        "reason": reason,
    }
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"site {cfg.name}: {report.indexed} images indexed ({report.decoded} decoded, {report.reused} from cache), "
              f"{len(report.rejected)} rejected")
        print("  projections: " + ", ".join(f"{k} {v}" for k, v in sorted(report.by_projection.items())))
        print("  splits:      " + ", ".join(f"{k} {v}" for k, v in sorted(report.by_split.items())))
        print("  labels:      " + ", ".join(f"{k} {v}" for k, v in out["by_label"].items()))
        for r in report.rejected:
            print(f"  rejected {r.path}: {r.reason}")
        print("  can train: " + ("yes" if can_train else f"no ({reason})"))
    return 0 if can_train else 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fedchest-site", description="fedchest hospital-site tools")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synth", help="write a synthetic site in a real on-disk format (not clinical data)")
    s.add_argument("--out", required=True, help="site folder to create (data/ and site.toml)")
    s.add_argument("--format", required=True, choices=["padchest", "mimic", "openi", "dicom"])
    s.add_argument("--name", help="site name (default: the folder name)")
    s.add_argument("--images", type=int, default=400)
    s.add_argument("--image-size", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--label-set", default="cxrlt2026")
    s.set_defaults(fn=_synth)
    c = sub.add_parser("check", help="scan, index and cache the site's data; report what was and was not read")
    c.add_argument("--config", required=True, help="path to site.toml")
    c.add_argument("--json", action="store_true", help="one JSON object on stdout")
    c.set_defaults(fn=_check)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
