"""Write client/synth/data/nih_label_sets.json: how often each set of consortium classes occurs together in NIH
ChestX-ray14's 112,120 label rows (Data_Entry_2017_v2020.csv.gz), mapped through the ontology's NIH synonym map.

The file holds aggregate counts only (label combinations and how many images carry them), no image name, patient,
age or view; combinations seen in fewer than MIN_COUNT images are left out and their share is stated. The
synthetic generator's `nih` label model (client/synth/labels.py) draws label sets from it, so synthetic sites have
NIH's real co-occurrence and long tail among the classes NIH can express.

    python scripts/nih_label_sets.py [--data ../shared/data/real] [--label-set cxrlt2026]
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

import pandas as pd

from shared_models.ontology import load_source_map

MIN_COUNT = 5
OUT = Path(__file__).resolve().parents[1] / "client" / "synth" / "data" / "nih_label_sets.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=os.environ.get("FEDCHEST_REAL_DATA", "../shared/data/real"))
    p.add_argument("--label-set", default="cxrlt2026")
    args = p.parse_args()
    table = Path(args.data) / "nih" / "Data_Entry_2017_v2020.csv.gz"
    if not table.exists():
        raise SystemExit(f"{table}: not found (set --data or FEDCHEST_REAL_DATA to the shared real-data folder)")
    source = load_source_map("nih", args.label_set)
    classes = source.label_set.classes
    counts: Counter[tuple[str, ...]] = Counter()
    labels = pd.read_csv(table, usecols=["Finding Labels"])["Finding Labels"]
    for raw in labels:
        target, _, unmapped = source.encode([t.strip() for t in str(raw).split("|") if t.strip()])
        if unmapped:
            raise SystemExit(f"{table}: Finding Labels term(s) {unmapped} are not in the NIH synonym map")
        counts[tuple(classes[i] for i in target.nonzero()[0])] += 1
    kept = sorted(((list(k), v) for k, v in counts.items() if v >= MIN_COUNT), key=lambda kv: (-kv[1], kv[0]))
    total = sum(counts.values())
    out = {
        "source": f"{table.name} (NIH ChestX-ray14, {total} label rows), Finding Labels mapped by "
                  f"shared_models/ontology/data/sources/nih.toml into {args.label_set}",
        "label_set": args.label_set,
        "rows": total,
        "annotated": [c for c, a in zip(classes, source.annotated) if a],
        "min_count": MIN_COUNT,
        "rows_left_out": total - sum(v for _, v in kept),
        "sets": kept,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    head = json.dumps({k: v for k, v in out.items() if k != "sets"}, indent=1)[:-2]
    rows = ",\n".join("  " + json.dumps(kv) for kv in kept)
    OUT.write_text(f'{head},\n "sets": [\n{rows}\n ]\n}}\n')
    print(f"{OUT}: {len(kept)} label sets covering {total - out['rows_left_out']} of {total} rows")


if __name__ == "__main__":
    main()
