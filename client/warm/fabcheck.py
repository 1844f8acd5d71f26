"""Is the code a warm worker preloaded the code of the task's FAB?

The worker imported the project (``client``, ``shared_models``, ...) from its own install; Flower's loader would
take that module from ``sys.modules`` whatever FAB the run ships. So before a child loads the ClientApp, the FAB
Flower just installed is compared file by file with the worker's: every FAB file under a preloaded package must
have the bytes of the worker's copy (which later lazy imports read), and every preloaded module must have had, when
it was imported, the bytes of the FAB's copy. Any difference: the child drops the project's modules and Flower
imports the app from the FAB, as the per-message process does; logged either way.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


@dataclass(frozen=True)
class Preloaded:
    """The project packages a worker imported: where from (``root``), and each loaded module file's digest
    (path relative to ``root``) at the time it was imported."""

    root: Path
    packages: frozenset[str]
    digests: dict[str, str]

    @classmethod
    def snapshot(cls, packages: list[str]) -> Preloaded:
        """Record the given top-level packages (already imported) and the digests of their loaded modules."""
        if not packages:
            raise ValueError("no project package to record: preload the ClientApp's module first")
        roots = set()
        for name in packages:
            module = sys.modules.get(name)
            if module is None or not getattr(module, "__file__", None):
                raise ValueError(f"{name}: not imported from a file, so it cannot be checked against a FAB")
            file = Path(module.__file__).resolve()
            roots.add(file.parents[1] if file.name == "__init__.py" else file.parent)
        if len(roots) != 1:
            raise ValueError(f"the project packages {packages} come from several folders {sorted(map(str, roots))}")
        root = roots.pop()
        digests = {}
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if name.split(".")[0] in packages and file:
                rel = Path(file).resolve().relative_to(root).as_posix()
                if (d := _digest(root / rel)) is not None:
                    digests[rel] = d
        return cls(root, frozenset(packages), digests)

    def differences(self, fab_dir: Path, limit: int = 5) -> list[str]:
        """Up to ``limit`` files where the installed FAB at ``fab_dir`` and the preloaded code differ (empty: same)."""
        found: list[str] = []
        fab_files = {p.relative_to(fab_dir).as_posix(): p for p in fab_dir.rglob("*")
                     if p.is_file() and p.relative_to(fab_dir).parts[0] in self.packages
                     and "__pycache__" not in p.relative_to(fab_dir).parts}  # bytecode a cold import wrote
        for rel, path in sorted(fab_files.items()):
            if len(found) >= limit:
                return found
            mine = self.root / rel
            if not mine.is_file():
                found.append(f"{rel} (not in the worker's code)")
            elif _digest(path) != _digest(mine):
                found.append(f"{rel} (changed)")
        for rel, digest in sorted(self.digests.items()):
            if len(found) >= limit:
                break
            if rel not in fab_files:
                found.append(f"{rel} (preloaded, not in the FAB)")
            elif _digest(fab_files[rel]) != digest:
                found.append(f"{rel} (changed since the worker imported it)")
        return found

    def forget(self) -> list[str]:
        """Drop the project's modules from ``sys.modules`` so the next import reads the FAB's files."""
        names = [n for n in sys.modules if n.split(".")[0] in self.packages]
        for name in names:
            del sys.modules[name]
        return names


def install_check(preloaded: Preloaded) -> None:
    """Make this process's Flower ClientApp loader check the task's FAB against ``preloaded`` first (in a forked
    child, before Flower's ``run_clientapp`` runs)."""
    from flwr.common.config import get_project_dir
    from flwr.supercore import log
    from flwr.supernode.runtime import run_clientapp as runtime
    from logging import INFO, WARNING

    original = runtime.get_load_client_app_fn

    def checked(default_app_ref: str, app_path: str | None, multi_app: bool):
        load = original(default_app_ref, app_path, multi_app)

        def load_checked(fab_id: str, fab_version: str, fab_hash: str):
            fab_dir = get_project_dir(fab_id, fab_version, fab_hash)
            diff = preloaded.differences(fab_dir)
            if diff:
                preloaded.forget()
                log(WARNING, "fedchest warm ClientApp: FAB %s differs from the worker's preloaded code (%s); this "
                    "task imports the app from the FAB (cold imports)", fab_hash[:12], "; ".join(diff))
            else:
                log(INFO, "fedchest warm ClientApp: FAB %s matches the preloaded code (%d modules); task runs on them",
                    fab_hash[:12], len(preloaded.digests))
            return load(fab_id, fab_version, fab_hash)

        return load_checked

    runtime.get_load_client_app_fn = checked
