"""The site's ClientApp for runs with secure aggregation (SecAgg+). Flower's SecAgg+ exists only on its legacy
API (``NumPyClient`` with ``secaggplus_mod``; see server/secagg_app.py), so this is a second, small ClientApp
around the same site code: the same site resolution, privacy policy, ledger and DP-SGD (client/local_round.py).
The server sees only the masked sum of the sites' weighted float parameters."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ConfigRecord, Context
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp

from client.audit import outbound_guard
from client.client_app import resolve_site, run_model, site_data
from client.local_round import site_release, train_round
from shared_models.messages import TRAIN_LOSS
from shared_models.networks import float_state_keys


class SiteClient(NumPyClient):
    def __init__(self, context: Context) -> None:
        self.context = context

    def fit(self, parameters, config):
        site = resolve_site(self.context, ConfigRecord(dict(config)))
        model = run_model(config, site)
        data = site_data(site, "train")
        state = model.state_dict()
        keys = float_state_keys(state)
        state.update({k: torch.from_numpy(np.asarray(a)).to(state[k].dtype) for k, a in zip(keys, parameters)})
        model.load_state_dict(state)
        config = {**config, "aggregation": "fedavg"}
        release = site_release(config, site, data, model.num_classes)  # under DP: weight and sampling rate
        stats, privacy = train_round(config, site, data, model, release)
        out = model.cpu().state_dict()
        if release is not None:  # no exact loss or count leaves a DP site
            return [out[k].numpy() for k in keys], release.public_size, privacy
        return [out[k].numpy() for k in keys], len(data), {TRAIN_LOSS: float(stats[TRAIN_LOSS]), **privacy}


def _client_fn(context: Context):
    return SiteClient(context).to_client()


app = ClientApp(client_fn=_client_fn, mods=[outbound_guard, secaggplus_mod])

__all__ = ["app"]
