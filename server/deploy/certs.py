"""Certificates and keys for a consortium (``fedchest certs``), with ``cryptography`` (no openssl CLI).

* A consortium CA (``ca.crt`` + ``ca.key``): signs the SuperLink's TLS certificate; hospitals get ``ca.crt``.
* The SuperLink certificate (``superlink.pem`` + ``superlink.key``) with the SANs Flower needs: the public names
  and addresses hospitals dial, plus ``IP:127.0.0.1`` (the SuperExec started by the SuperLink verifies TLS on the
  loopback address) and ``IP:::1``.
* One ECDSA P-384 key pair per site in OpenSSH format (Flower's SuperNode authentication rejects Ed25519):
  ``sites/<name>`` (private, stays at the hospital) and ``sites/<name>.pub`` (registered with the SuperLink).

Private keys are created with mode 0600 from the first byte (never world-readable, even briefly) and are never
printed or logged; an existing key is never overwritten.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class CertError(RuntimeError):
    """A certificate or key operation that cannot go ahead (message says which file and why)."""


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CertError(f"{path}: a private key already exists; refusing to overwrite it "
                        "(move it away first if you really mean to replace it)") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o644)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedchest consortium"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def make_ca(out: Path, name: str = "fedchest consortium CA", days: int = 3650) -> tuple[Path, Path]:
    """A self-signed consortium CA. Returns (ca.crt, ca.key)."""
    key = ec.generate_private_key(ec.SECP384R1())
    subject = _name(name)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(_now() - dt.timedelta(minutes=5))
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384()))
    _write_private(out / "ca.key", _pem_key(key))
    _write_public(out / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
    return out / "ca.crt", out / "ca.key"


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    crt, key = ca_dir / "ca.crt", ca_dir / "ca.key"
    for p in (crt, key):
        if not p.exists():
            raise CertError(f"{p}: not found; create the consortium CA first (fedchest certs init)")
    try:
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except ValueError as exc:
        raise CertError(f"{ca_dir}: ca.crt / ca.key are not a PEM certificate and key ({exc})") from None
    return cert, private


def subject_alt_names(names: list[str]) -> list[x509.GeneralName]:
    """DNS names and IP addresses, always with the loopback ones Flower's SuperExec needs."""
    out: list[x509.GeneralName] = []
    for n in dict.fromkeys([*names, *LOOPBACK]):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?", n):
                raise CertError(f"SuperLink name {n!r}: expected a DNS name or an IP address") from None
            out.append(x509.DNSName(n))
    return out


def make_superlink_cert(ca_dir: Path, out: Path, names: list[str], days: int = 825) -> tuple[Path, Path]:
    """The SuperLink's TLS certificate, signed by the consortium CA. Returns (superlink.pem, superlink.key)."""
    ca_cert, ca_key = _load_ca(ca_dir)
    key = ec.generate_private_key(ec.SECP384R1())
    cn = next((n for n in names if n not in LOOPBACK), "localhost")
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() - dt.timedelta(minutes=5)).not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(subject_alt_names(names)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA384()))
    _write_private(out / "superlink.key", _pem_key(key))
    _write_public(out / "superlink.pem", cert.public_bytes(serialization.Encoding.PEM))
    return out / "superlink.pem", out / "superlink.key"


def make_site_key(out: Path, site: str) -> tuple[Path, Path]:
    """An ECDSA P-384 key pair in OpenSSH format for SuperNode authentication. Returns (private, public)."""
    if not SITE_NAME.match(site):
        raise CertError(f"site name {site!r}: expected letters, digits, '.', '_' or '-' (at most 63 characters)")
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write_private(out / site, private)
    _write_public(out / f"{site}.pub", public + f" fedchest-site-{site}\n".encode())
    return out / site, out / f"{site}.pub"


def describe(path: Path) -> str:
    """One line about a certificate (subject, SANs, expiry): safe to print, no key material."""
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        alt = ", ".join(str(getattr(g, "value", g)) for g in sans)
    except x509.ExtensionNotFound:
        alt = "-"
    return (f"{path.name}: {cert.subject.rfc4514_string()}; SANs {alt}; "
            f"valid until {cert.not_valid_after_utc:%Y-%m-%d}")
