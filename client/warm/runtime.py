"""Two waits of Flower 1.41's ClientApp runtime (``flwr.supernode.runtime.run_clientapp``) a warm task skips.

- **The message's objects.** The SuperNode stores a message and creates its task *before* it has pulled the
  message's objects from the SuperLink, so a task that starts at once (as a forked warm child does) often asks its
  SuperNode for an object that is not there yet. Flower then backs off from 1 s, doubling to 10 s: a round's
  instruction waited a second or more for objects that arrived milliseconds later (measured with cProfile in the
  warm children of ``fedchest deploy local``: 1.2-1.8 s of each task's 1.3 s median pull). Here the task's pull backs
  off from half the SuperNode's poll interval (``FEDCHEST_NODE_POLL_S``, default 0.1 s) to that interval, within
  Flower's own time budget (``PULL_MAX_TIME``), as ``fedchest-supernode`` does for the SuperNode's pulls.
- **The FAB.** Every task extracts the run's FAB to a temporary folder and checks each file's hash, then finds the
  app already installed (Flower keeps an installed FAB in a folder named by 8 hex digits of the FAB's SHA-256) and
  copies nothing: 0.15-0.5 s per task for nothing. Here, once Flower has installed a FAB, the folder gets a file
  with the FAB's full SHA-256 (``MARKER``); a later task whose FAB has that digest uses the folder without
  extracting the FAB again. Any other FAB is installed by Flower as before. The folder was made by Flower from a
  verified extraction of the same bytes; Flower's own check of an existing install is its folder name alone.

``prepare()`` applies both in this process: the warm worker calls it once after preloading, so every task it forks
inherits them. A Flower whose runtime is not shaped as patched here is refused with a clear error (the worker does
not start; the SuperNode's tasks then run cold, logged by the shim).
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

from client.deploy.supernode import FlowerShapeError, poll_seconds, prompt_pulls


def prompt_object_pulls(poll: float) -> None:
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supernode.runtime import run_clientapp as runtime

    current = runtime.pull_and_inflate_object_from_tree
    if isinstance(current, functools.partial) and current.func is inflatable_utils.pull_and_inflate_object_from_tree:
        return
    if current is not inflatable_utils.pull_and_inflate_object_from_tree:
        raise FlowerShapeError("flwr.supernode.runtime.run_clientapp does not pull a task's message with "
                               "flwr.supercore.inflatable's pull_and_inflate_object_from_tree")
    runtime.pull_and_inflate_object_from_tree = prompt_pulls(current, poll)


MARKER = ".fedchest-fab-sha256"


def installed_fab(digest: str) -> Path | None:
    """The folder Flower installed the FAB of this SHA-256 in, when this module has seen it installed (else None)."""
    from flwr.common.config import get_flwr_home
    from flwr.common.constant import APP_DIR, FAB_HASH_TRUNCATION

    for folder in (get_flwr_home() / APP_DIR).glob(f"*.{digest[:FAB_HASH_TRUNCATION]}"):
        try:
            if (folder / MARKER).read_text(encoding="ascii").strip() == digest:
                return folder
        except OSError:
            continue
    return None


def mark_installed(folder: Path, digest: str) -> None:
    tmp = folder / f"{MARKER}.{os.getpid()}"
    tmp.write_text(digest, encoding="ascii")
    os.replace(tmp, folder / MARKER)


def reuse_installed_fabs() -> None:
    from flwr.cli import install
    from flwr.supernode.runtime import run_clientapp as runtime

    current = runtime.install_from_fab
    if getattr(current, "reuses_installed", False):
        return
    if current is not install.install_from_fab:
        raise FlowerShapeError("flwr.supernode.runtime.run_clientapp does not install FABs with "
                               "flwr.cli.install's install_from_fab")

    @functools.wraps(current)
    def install_once(fab_file, install_dir=None, skip_prompt=False):
        if not (isinstance(fab_file, bytes) and install_dir is None and skip_prompt):
            return current(fab_file, install_dir, skip_prompt)
        digest = hashlib.sha256(fab_file).hexdigest()
        if (found := installed_fab(digest)) is not None:
            return found
        folder = current(fab_file, install_dir, skip_prompt)
        try:
            mark_installed(Path(folder), digest)
        except OSError:  # a read-only install: the next task extracts again, as Flower does
            pass
        return folder

    install_once.reuses_installed = True
    runtime.install_from_fab = install_once


def prepare() -> None:
    """Apply both changes in this process; FlowerShapeError (a RuntimeError) for another Flower."""
    prompt_object_pulls(poll_seconds())
    reuse_installed_fabs()
