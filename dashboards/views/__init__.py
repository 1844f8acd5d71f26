"""Dashboard pages: one module per page, each with ``TITLE`` and ``render(ctx)``."""

from dashboards.views import (classes, ct, generalisation, health, localization, overview, privacy, reliability,
                              sites)

PAGES = {m.TITLE: m for m in (overview, sites, classes, generalisation, ct, localization, health, privacy,
                                   reliability)}
SLUGS = {m.SLUG: m.TITLE for m in PAGES.values()}

__all__ = ["PAGES", "SLUGS"]
