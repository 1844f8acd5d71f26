"""Fixed split salts for tests whose assertions depend on which images land in a split.

A site's patient-level split comes from a random per-site secret (``site-secret.key``, made on first use), so two
runs of one test see different train/test splits. CI once drew a split with a single tail class at a site where the
test needed two. Tests that need a particular split composition write the secret themselves before indexing, with
``client.site_config.pin_split_salt`` (the benchmarks use the same function).
"""

from client.site_config import pin_split_salt

__all__ = ["pin_split_salt"]
