"""The coordinator side of fedchest: ServerApp, strategies, update validation, checkpoints and the run
registry. Never imports `client`."""
