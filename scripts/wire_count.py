"""What one train message carries for a model preset, one Array per tensor (before the packed wire format) against
the pack (shared_models/wire.py): Flower Arrays, the distinct objects the SuperLink moves (message, records,
Arrays, 5 MiB chunks; identical objects count once, as Flower deduplicates them by id), and bytes.

    PYTHONPATH=. python scripts/wire_count.py [--preset tiny] [--label-set cxrlt2026] [--image-size 64]

Prints JSON. With ``perturbed`` the weights get distinct random values first, as a trained update has (a freshly
initialised model has many identical tensors, e.g. batch-norm statistics, that Flower sends once)."""

from __future__ import annotations

import argparse
import json
import time

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from server.records import to_record
from shared_models.networks import build_model, group_keys
from shared_models.npy import npy_fields
from shared_models.ontology import load_label_set


def message_figures(record: ArrayRecord) -> dict:
    meta = Metadata(run_id=1, message_id="", src_node_id=0, dst_node_id=1, reply_to_message_id="", group_id="1",
                    created_at=time.time(), ttl=60.0, message_type="train")
    msg = Message(content=RecordDict({"arrays": record, "config": ConfigRecord({"server-round": 1})}), metadata=meta)
    return {"arrays": len(record), "objects": len(get_all_nested_objects(msg)),
            "array_bytes": sum(len(a.data) for a in record.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--label-set", default="cxrlt2026")
    ap.add_argument("--image-size", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    state = build_model(args.preset, load_label_set(args.label_set).num_seen, image_size=args.image_size).state_dict()
    out = {"preset": args.preset, "tensors": len(state), "groups": len(group_keys(state))}
    for name, values in (("fresh", state), ("perturbed", {k: v + torch.rand_like(v) if v.is_floating_point() else v
                                                          for k, v in state.items()})):
        per_tensor = ArrayRecord({k: Array(**npy_fields(v.numpy())) for k, v in values.items()})
        out[name] = {"per_tensor": message_figures(per_tensor), "packed": message_figures(to_record(values))}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
