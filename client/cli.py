"""`fedchest-site`: what a hospital site runs (synthetic data, data checks, prediction, evaluation)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from client.privacy import suppress_counts as suppress

MIN_TRAIN_SAMPLES = 8


def _synth(args: argparse.Namespace) -> int:
    from client.synth import synthesize_site
    from client.synth.ct import CT_FORMATS, synthesize_ct_site

    if args.format in CT_FORMATS:
        try:
            shape = tuple(int(v) for v in args.ct_shape.split(","))
            spacing = tuple(float(v) for v in args.ct_spacing.split(","))
            if len(shape) != 3 or len(spacing) != 3 or min(shape) < 4 or min(spacing) <= 0:
                raise ValueError
        except ValueError:
            print(f"error: --ct-shape {args.ct_shape!r} / --ct-spacing {args.ct_spacing!r}: expected three voxel "
                  "counts >= 4 and three positive mm values, as Z,Y,X", file=sys.stderr)
            return 2
        toml = synthesize_ct_site(Path(args.out), args.format, args.name or Path(args.out).name, args.images, shape,
                                  spacing, args.seed)
        print(f"wrote synthetic {args.format} site {toml.parent} ({args.images} volumes of {args.ct_shape} voxels at "
              f"{args.ct_spacing} mm); config {toml}")
        return 0
    mix = None
    if args.projection_mix:
        try:
            mix = tuple(float(x) for x in args.projection_mix.split(","))
        except ValueError:
            print(f"error: --projection-mix {args.projection_mix!r}: expected three numbers PA,AP,LAT", file=sys.stderr)
            return 2
    scale = None
    if args.prevalence_scale:
        try:
            scale = {k.strip(): float(v) for k, v in (item.rsplit("=", 1) for item in args.prevalence_scale.split(","))}
            if min(scale.values()) <= 0:
                raise ValueError
        except ValueError:
            print(f"error: --prevalence-scale {args.prevalence_scale!r}: expected CLASS=FACTOR pairs separated by "
                  "commas, each factor > 0 (e.g. 'Scoliosis=2,goiter=10')", file=sys.stderr)
            return 2
    try:
        toml = synthesize_site(Path(args.out), args.format, args.name or Path(args.out).name, args.images,
                               args.image_size, args.seed, args.label_set, projection_mix=mix,
                               prevalence_scale=scale, held_out_rate=args.held_out_rate,
                               real_structure=args.real_structure)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote synthetic {args.format} site {toml.parent} ({args.images} images, {args.image_size}px); config "
          f"{toml}")
    if args.check:  # in this process: no second start-up importing torch
        return _check(argparse.Namespace(config=str(toml), json=False, k=None))
    return 0


def check_report(cfg, report, k: int) -> dict:
    """The `check` result as one JSON-able object; counts below k are suppressed."""
    can_train = report.by_split.get("train", 0) >= MIN_TRAIN_SAMPLES
    sizes = sorted(min(s) for s in report.sizes)
    return {
        "site": cfg.name,
        "indexed": report.indexed,
        "decoded": report.decoded,
        "reused_from_cache": report.reused,
        "rejected": [{"path": r.path, "reason": r.reason} for r in report.rejected],
        "notes": [{"path": n.path, "note": n.message} for n in report.notes],
        "by_source": suppress(dict(report.by_source), k),
        "by_projection": suppress(dict(report.by_projection), k),
        "by_projection_method": suppress(dict(report.by_projection_method), k),
        "by_split": suppress(dict(report.by_split), k),
        "by_label": suppress(dict(sorted(report.by_label.items(), key=lambda kv: -kv[1])), k),
        "bit_depths": suppress(dict(report.bit_depths), k),
        "photometric": suppress(dict(report.photometric), k),
        "vendors": suppress(dict(report.vendors), k),
        "boxes": report.boxes,
        "image_size_px": {"min": sizes[0], "median": sizes[len(sizes) // 2], "max": sizes[-1]} if sizes else {},
        "label_mapping": report.label_mapping,
        "min_count": k,
        "can_train": can_train,
        "reason": "" if can_train else f"fewer than {MIN_TRAIN_SAMPLES} readable training images "
                                        f"({report.by_split.get('train', 0)} indexed in the train split)",
    }


def _check_ct(cfg, args: argparse.Namespace) -> int:
    from client.ct.index import prepare_ct_site, site_ct_spec

    spec = site_ct_spec(cfg)
    index = prepare_ct_site(cfg, spec)
    out = {"site": cfg.name, "modality": "CT", "grid": {"spacing_mm": spec.spacing, "size": spec.size,
                                                        "window_hu": spec.window},
           **index.summary(args.k if args.k is not None else cfg.min_count)}
    out["can_train"] = len(index.split("train")) >= MIN_TRAIN_SAMPLES
    if args.json:
        print(json.dumps(out, indent=1))
        return 0 if out["can_train"] else 2
    print(f"site {cfg.name}: {out['indexed']} CT volumes indexed ({out['decoded']} decoded, {out['reused_from_cache']} "
          f"from cache), {len(out['rejected'])} rejected; grid {spec.size} voxels at {spec.spacing} mm")
    for key in ("by_source", "by_split", "by_label"):
        print(f"  {key.replace('by_', ''):<18} " + ", ".join(f"{a} {b}" for a, b in out[key].items()))
    print(f"  {'slice references':<18} {out['snippets']} report sentences point at a slice on the grid")
    print_rejections(index.rejected)
    print_notes(index.notes)
    print("  can train: " + ("yes" if out["can_train"] else f"no (fewer than {MIN_TRAIN_SAMPLES} training volumes)"))
    return 0 if out["can_train"] else 2


MAX_REJECTION_KINDS = 25


def print_rejections(rejected, examples: int = 3) -> None:
    """Rejections grouped by reason (numbers in a reason, such as byte counts and line numbers, do not split a
    group), largest group first, each with its count, its first reason and a few example paths."""
    groups: dict[str, list] = {}
    for r in rejected:
        reason = r.reason.removeprefix(f"{r.path}: ")  # CT readers name the file in the message too
        groups.setdefault(re.sub(r"\d+", "#", reason), []).append((r.path, reason))
    ordered = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    for _, members in ordered[:MAX_REJECTION_KINDS]:
        reason = members[0][1] + ("" if len({m[1] for m in members}) == 1 else " (numbers vary)")
        paths = [m[0] for m in members]
        shown = "; ".join(paths[:examples]) + (f"; ... {len(paths) - examples} more" if len(paths) > examples else "")
        print(f"  rejected ({len(paths)}) {reason}: {shown}")
    if len(ordered) > MAX_REJECTION_KINDS:
        rest = sum(len(m) for _, m in ordered[MAX_REJECTION_KINDS:])
        print(f"  ... {rest} more rejections of {len(ordered) - MAX_REJECTION_KINDS} other kinds (see --json)")


def print_notes(notes, limit: int = 20) -> None:
    for n in notes[:limit]:
        print(f"  note {n.path}: {n.message}")
    if len(notes) > limit:
        print(f"  ... {len(notes) - limit} more notes (see --json)")


def _check(args: argparse.Namespace) -> int:
    from client.file_errors import is_site_error
    from client.index import prepare_site
    from client.site_config import SiteConfigError, load_site_config

    from client.ct.index import is_ct_site

    try:
        cfg = load_site_config(args.config)
        if is_ct_site(cfg):
            return _check_ct(cfg, args)
        report = prepare_site(cfg)
    except SiteConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: check interrupted; the index was not updated", file=sys.stderr)
        return 130
    except Exception as exc:
        if not is_site_error(exc):
            raise  # not a file's error and not the site's: a fedchest bug, whose traceback is wanted
        print(f"error: the scan stopped on an error of the site (not of a data file): {type(exc).__name__}: {exc}"
              " -- free disk space / memory or fix the work dir's permissions, then run check again", file=sys.stderr)
        return 2
    out = check_report(cfg, report, args.k if args.k is not None else cfg.min_count)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0 if out["can_train"] else 2
    print(f"site {cfg.name}: {report.indexed} images indexed ({report.decoded} decoded, {report.reused} from cache), "
          f"{len(report.rejected)} rejected")
    for key in ("by_source", "by_projection", "by_projection_method", "by_split", "bit_depths",
                "photometric", "vendors"):
        print(f"  {key.replace('by_', '').replace('_', ' '):<18} " + ", ".join(f"{a} {b}" for a, b in out[key].items()))
    if out["image_size_px"]:
        print(f"  {'image size (px)':<18} min {out['image_size_px']['min']}, median {out['image_size_px']['median']}, "
              f"max {out['image_size_px']['max']} (shorter side)")
    if report.boxes:
        print(f"  {'boxes':<18} {report.boxes} ground-truth boxes on indexed images")
    print(f"  {'labels':<18} " + ", ".join(f"{a} {b}" for a, b in out["by_label"].items()))
    for name, m in report.label_mapping.items():
        if m["unmapped"]:
            print(f"  unmapped terms in {name}: "
                  + ", ".join(f"{t} ({n})" for t, n in list(m["unmapped"].items())[:15]))
        if m["not_annotated"]:
            print(f"  {name} cannot express (masked): " + ", ".join(m["not_annotated"]))
    print_rejections(report.rejected)
    print_notes(report.notes)
    print("  can train: " + ("yes" if out["can_train"] else f"no ({out['reason']})"))
    return 0 if out["can_train"] else 2


def _report(args: argparse.Namespace) -> int:
    from client.box_report import report_files

    if not args.config:
        print("error: --report needs --config SITE.toml (the site's case index and calibration live there)",
              file=sys.stderr)
        return 2
    try:
        results = report_files([Path(p) for p in args.images], Path(args.checkpoint), Path(args.config),
                               args.projection, args.cases)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=1))
    for r in results if not args.json else ():
        if "error" in r:
            print(f"{r['image']}: cannot read ({r['error']})")
            continue
        temp = f"temperature {r['temperature']:.2f}" if r["temperature"] else "temperature not fitted"
        print(f"== {r['image']} (projection {r['projection']}, {r['projection_from']}; BL-TTA N={r['samples']}, "
              f"{temp}; OOD score {r['ood']['score']:.2f}, site threshold {r['ood']['threshold']:.2f})")
        print(r["draft_report"])
    return 0 if all("error" not in r for r in results) else 2


def _predict(args: argparse.Namespace) -> int:
    from client.predict import predict_files

    if args.report:
        return _report(args)
    try:
        results = predict_files([Path(p) for p in args.images], Path(args.checkpoint), args.image_size,
                                args.projection, args.tta)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['image']}: cannot read ({r['error']})")
                continue
            top = sorted(r["probabilities"].items(), key=lambda kv: -kv[1])[: args.top]
            print(f"{r['image']}: projection {r['projection']} ({r['projection_from']})"
                  + (", TTA" if r["tta"] else "") + ": " + ", ".join(f"{c} {p:.3f}" for c, p in top))
    return 0 if all("error" not in r for r in results) else 2


def _evaluate(args: argparse.Namespace) -> int:
    from client.site_config import SiteConfigError, load_site_config
    from client.site_evaluate import EvaluationMismatch, evaluate_site, evaluation_lines, jsonable, write_scores

    try:
        cfg = load_site_config(args.config)
        ev = evaluate_site(Path(args.checkpoint), cfg, args.split)
    except (SiteConfigError, EvaluationMismatch, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.scores:
        write_scores(ev, Path(args.scores))
    if args.json:
        print(json.dumps(jsonable({**ev.result, "scores": args.scores}), indent=1))
        return 0
    print("\n".join(evaluation_lines(ev.result)))
    if args.scores:
        print(f"per-image scores: {args.scores} ({len(ev.images)} rows; stays at this site)")
    return 0


def _localize(args: argparse.Namespace) -> int:
    from client.localize import draw_overlay, localize

    image = Path(args.image)
    try:
        result = localize(image, args.prompts, Path(args.checkpoint), args.threshold)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else image.with_name(image.stem + "-localized.png")
    result["overlay"] = str(draw_overlay(image, result, out))
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{image} ({result['width']} x {result['height']} px); boxes as x, y, w, h in its pixels; "
          f"presence threshold {args.threshold:g}")
    for entry in result["prompts"]:
        shown = [r for r in entry["regions"] if r["shown"]]
        if not shown:
            best = entry["regions"][0]
            print(f"  {entry['prompt']!r}: nothing above the threshold (best region {best['box_xywh']}, "
                  f"presence {best['presence']:.2f})")
        for r in shown:
            print(f"  {entry['prompt']!r}: box {r['box_xywh']} presence {r['presence']:.2f}")
    print(f"overlay: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fedchest-site", description="fedchest hospital-site tools")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synth", help="write a synthetic site in a real on-disk format (not clinical data)")
    s.add_argument("--out", required=True, help="site folder to create (data/ and site.toml)")
    s.add_argument("--format", required=True, choices=["padchest", "mimic", "openi", "dicom", "ct-rate", "dicom-ct"])
    s.add_argument("--name", help="site name (default: the folder name)")
    s.add_argument("--images", type=int, default=400, help="images (CT formats: volumes)")
    s.add_argument("--ct-shape", default="40,64,64", help="CT formats: voxels Z,Y,X of each volume")
    s.add_argument("--ct-spacing", default="5,5,5", help="CT formats: mm per voxel Z,Y,X")
    s.add_argument("--image-size", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--label-set", default="cxrlt2026")
    s.add_argument("--projection-mix", help="shares of PA,AP,LAT views (default: the format's hospital profile)")
    s.add_argument("--prevalence-scale", help="CLASS=FACTOR,...: these classes are drawn at FACTOR x their catalogue "
                   "rate (replacing the hospital profile's factor), e.g. to plant enough held-out findings to score "
                   "zero-shot prompts")
    s.add_argument("--held-out-rate", type=float, default=0.0,
                   help="draw each of the label set's held-out (zero-shot) findings at this rate instead of its "
                        "real-world 0.2-3 %%, so that a small site's test split holds enough of them to score "
                        "zero-shot prompts")
    s.add_argument("--real-structure", action="store_true",
                   help="label sets drawn from NIH ChestX-ray14's real co-occurrence and long tail, and findings that "
                        "look different on AP and lateral views (the benchmark testbed; still synthetic images)")
    s.add_argument("--check", action="store_true",
                   help="then index the new site as `fedchest-site check --config DIR/site.toml` does (exit code "
                        "included)")
    s.set_defaults(fn=_synth)
    c = sub.add_parser("check", help="scan, index and cache the site's data; report what was and was not read")
    c.add_argument("--config", required=True, help="path to site.toml")
    c.add_argument("--json", action="store_true", help="one JSON object on stdout (counts below k shown as '<k')")
    c.add_argument("--k", type=int, help="small-count threshold (default: [privacy] min_count in site.toml, else 5)")
    c.set_defaults(fn=_check)
    q = sub.add_parser("predict", help="run the global model on image files (PNG, JPEG, DICOM)")
    q.add_argument("images", nargs="+")
    q.add_argument("--checkpoint", required=True, help="a round-NNN.pt checkpoint of the global model")
    q.add_argument("--projection", choices=["PA", "AP", "LAT"],
                   help="override the view (default: metadata, else router)")
    q.add_argument("--image-size", type=int, help="model input size (default: the checkpoint's)")
    q.add_argument("--tta", action="store_true", help="average over radiograph-safe test-time augmentations")
    q.add_argument("--top", type=int, default=5, help="classes shown per image (all of them with --json)")
    q.add_argument("--json", action="store_true")
    q.add_argument("--report", action="store_true",
                   help="box-latent checkpoints: findings with confidence tiers, OOD flag, similar site cases, draft")
    q.add_argument("--config", help="with --report: the site.toml whose case index and calibration are used")
    q.add_argument("--cases", type=int, default=3, help="with --report: similar cases shown")
    q.set_defaults(fn=_predict)
    e = sub.add_parser("evaluate", help="score a consortium checkpoint on this site's indexed images (stays here)")
    e.add_argument("--checkpoint", required=True, help="a round-NNN.pt checkpoint of the global model")
    e.add_argument("--config", required=True, help="path to site.toml (indexed by `fedchest-site check`)")
    e.add_argument("--split", default="all", choices=["all", "train", "val", "test"],
                   help="which of the site's patient-level splits (default: every indexed image)")
    e.add_argument("--scores", help="write a CSV: image (file name), then one probability column per class")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=_evaluate)
    z = sub.add_parser("localize", help="boxes for text prompts (e.g. \"left pleural effusion\") and an overlay PNG")
    z.add_argument("image", help="PNG, JPEG or DICOM")
    z.add_argument("prompts", nargs="+", help="one or more text prompts")
    z.add_argument("--checkpoint", required=True, help="a round-NNN.pt checkpoint of a run with localizer = true")
    z.add_argument("--out", help="overlay PNG (default: IMAGE-localized.png beside the image)")
    z.add_argument("--threshold", type=float, default=0.5, help="presence probability a box needs to be shown")
    z.add_argument("--json", action="store_true")
    z.set_defaults(fn=_localize)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
