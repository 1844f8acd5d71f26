"""`site.toml`: what a hospital site holds and where (paths are relative to the file's folder)."""

from __future__ import annotations

import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from client.privacy import PrivacyPolicy


class SiteConfigError(ValueError):
    """A site.toml that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class SourceConfig:
    kind: str
    root: Path
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SiteConfig:
    path: Path
    name: str
    work_dir: Path
    label_set: str
    image_size: int
    val_fraction: float
    test_fraction: float
    sources: tuple[SourceConfig, ...]
    synthetic: bool = False
    min_image_size: int = 32
    verify_content: bool = False
    privacy: PrivacyPolicy = field(default_factory=PrivacyPolicy)  # [privacy]: the site's rules (client/privacy.py)
    trust_cnn_projection: bool = False  # PadChest's CNN-inferred (MethodProjection resnet) views
    untrusted_projection_sources: tuple[str, ...] = ()  # source kinds whose views the router decides instead
    ct: dict[str, Any] = field(default_factory=dict)  # [ct]: the CT grid (client/ct/index.py site_ct_spec)

    @property
    def min_count(self) -> int:
        """Counts below this are shown as "<k" (reports) or sent as 0 (updates) in anything that leaves."""
        return self.privacy.min_count

    @property
    def index_path(self) -> Path:
        return self.work_dir / "index.sqlite"

    @property
    def cache_dir(self) -> Path:
        return self.work_dir / "cache" / f"{self.image_size}px"

    def secret_salt(self) -> bytes:
        """Per-site secret used to hash patient ids; created on first use, never leaves the site."""
        p = self.work_dir / "site-secret.key"
        if not p.exists():
            self.work_dir.mkdir(parents=True, exist_ok=True)
            p.write_text(secrets.token_hex(32))
            p.chmod(0o600)
        return bytes.fromhex(p.read_text().strip())


def pin_split_salt(site_toml: str | Path, key: int) -> None:
    """Write a fixed ``site-secret.key`` (from the integer ``key``) into the site's work folder, before the site is
    first indexed, so its patient-level splits are the same on every run. For benchmarks and tests that must be
    reproducible; a hospital keeps the random secret ``secret_salt`` makes."""
    work = load_site_config(site_toml).work_dir
    work.mkdir(parents=True, exist_ok=True)
    (work / "site-secret.key").write_text(f"{int(key):064x}")


def _privacy(table: dict, path: Path) -> PrivacyPolicy:
    try:
        return PrivacyPolicy.from_table(table, str(path))
    except ValueError as exc:
        raise SiteConfigError(str(exc)) from None


def _require(table: dict, key: str, kind: type, where: str, path: Path) -> Any:
    if key not in table:
        raise SiteConfigError(f"{path}: missing field {where}{key} (expected {kind.__name__})")
    value = table[key]
    if kind is float and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kind):
        raise SiteConfigError(f"{path}: field {where}{key} is {value!r}, expected {kind.__name__}")
    return value


def load_site_config(path: str | Path) -> SiteConfig:
    path = Path(path).resolve()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SiteConfigError(f"{path}: site config not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise SiteConfigError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise SiteConfigError(f"{path}: not UTF-8 text (expected a TOML file)") from None
    except OSError as exc:  # a folder, no permission, ...
        raise SiteConfigError(f"{path}: cannot read the site config ({exc.strerror or exc})") from None
    base = path.parent
    site = raw.get("site")
    if not isinstance(site, dict):
        raise SiteConfigError(f"{path}: missing table [site]")
    split = raw.get("split", {})
    sources = []
    for i, src in enumerate(raw.get("sources", [])):
        kind = _require(src, "kind", str, f"sources[{i}].", path)
        root = base / _require(src, "root", str, f"sources[{i}].", path)
        options = {k: v for k, v in src.items() if k not in ("kind", "root")}
        sources.append(SourceConfig(kind=kind, root=root, options=options))
    if not sources:
        raise SiteConfigError(f"{path}: no [[sources]] listed (each needs kind and root)")
    cfg = SiteConfig(
        path=path,
        name=_require(site, "name", str, "site.", path),
        work_dir=base / site.get("work_dir", "work"),
        label_set=site.get("label_set", "cxrlt2026"),
        image_size=int(site.get("image_size", 224)),
        val_fraction=float(split.get("val", 0.1)),
        test_fraction=float(split.get("test", 0.2)),
        sources=tuple(sources),
        synthetic=bool(site.get("synthetic", False)),
        min_image_size=int(site.get("min_image_size", 32)),
        verify_content=bool(site.get("verify_content", False)),
        privacy=_privacy(raw.get("privacy", {}), path),
        trust_cnn_projection=bool(site.get("trust_cnn_projection", False)),
        untrusted_projection_sources=tuple(s.kind for s in sources if s.options.get("trust_projection") is False),
        ct=dict(raw.get("ct", {})) if isinstance(raw.get("ct", {}), dict) else {},
    )
    if not 0 <= cfg.val_fraction + cfg.test_fraction < 1:
        raise SiteConfigError(f"{path}: split.val + split.test must be in [0, 1)")
    if cfg.image_size < 16:
        raise SiteConfigError(f"{path}: site.image_size {cfg.image_size} is too small (expected >= 16)")
    return cfg
