"""Fixed split salts for tests whose assertions depend on which images land in a split.

A site's patient-level split comes from a random per-site secret (``site-secret.key``, made on first use), so two
runs of one test see different train/test splits. CI once drew a split with a single tail class at a site where the
test needed two. Tests that need a particular split composition write the secret themselves before indexing.
"""

from __future__ import annotations

from pathlib import Path

from client.site_config import load_site_config


def pin_split_salt(site_toml: Path, key: int) -> None:
    """Write a fixed ``site-secret.key`` into the site's work folder (before ``prepare_site``)."""
    work = load_site_config(site_toml).work_dir
    work.mkdir(parents=True, exist_ok=True)
    (work / "site-secret.key").write_text(f"{key:064x}")
