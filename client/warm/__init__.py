"""The warm ClientApp: a long-lived per-SuperNode worker that has torch, timm, Flower's ClientApp runtime and the
project's ClientApp imported once, and forks a child per task that runs Flower's own ``flwr-clientapp`` entry point.

Flower 1.41's SuperExec starts ``flwr-clientapp`` by name for every message; a shim of that name first on the
SuperNode's PATH (``shim.py``, copied there by ``install_shim``) forwards its argv, environment, working directory,
standard streams and exit code to the worker over a Unix socket. Without a reachable worker the shim runs the real
``flwr-clientapp`` and says so in one line. ``worker.py`` serves; ``fabcheck.py`` keeps a child on the preloaded code
only when the task's FAB holds the same files; ``site.py`` starts a worker beside a SuperNode.
"""

SOCKET_ENV = "FEDCHEST_WARM_SOCKET"
