"""What a failure while reading one file becomes.

Any exception raised while reading, parsing or decoding one file (pydicom, Pillow, nibabel, the codecs, pandas,
the XML parser) is a rejection of that file with its reason; only errors of the site itself (a full disk or quota,
a read-only work dir, no memory, an interrupt) stop a scan. This module is the one place that draws that line
(`is_site_error`) and words the reason (`reason_for`): a `FileProblem` (the readers' own, deliberately worded
errors) keeps its message; anything else reads ``ExceptionClass: message``. Quoted values in a library's message
are redacted unless they name a DICOM attribute, a DICOM-standard UID, a text codec or a code identifier, so a
value from a mangled header (a patient's name or id) is never echoed into a report.
"""

from __future__ import annotations

import codecs
import errno
import logging
import re
import sqlite3
import warnings
from contextlib import contextmanager
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import TypeVar

T = TypeVar("T")

SITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.ENOMEM})
SITE_SQLITE = ("full", "readonly", "disk i/o", "unable to open")  # the index's database cannot be written
MAX_REASON = 240
READER_LOGGERS = ("pydicom", "nibabel.global")
_QUOTED = re.compile(r"""b?'[^'\n]*'|b?"[^"\n]*\"""")
_CODE_NAME = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)+")  # file_meta, pixel_array, ...
_STANDARD_UID = re.compile(r"1\.2\.840\.10008(\.\d+)+")


class FileProblem(ValueError):
    """A file that cannot be used, in the reader's own words (what was found, what was expected)."""


def is_site_error(exc: BaseException) -> bool:
    """True for what no single file can cause and no rejection can absorb: an interrupt or exit, no memory, a full
    disk or quota, a read-only file system."""
    if not isinstance(exc, Exception) or isinstance(exc, MemoryError):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        return any(s in str(exc).lower() for s in SITE_SQLITE)
    return isinstance(exc, OSError) and exc.errno in SITE_ERRNOS


@lru_cache(maxsize=1)
def _dicom_names() -> frozenset[str]:
    try:
        from pydicom.datadict import DicomDictionary
    except ImportError:  # pragma: no cover - pydicom is a dependency
        return frozenset()
    return frozenset(n for entry in DicomDictionary.values() for n in (entry[2], entry[4]) if n)


def _is_codec(name: str) -> bool:
    try:
        codecs.lookup(name)
    except LookupError:
        return False
    return True


def _safe_literal(text: str) -> bool:
    return (text in _dicom_names() or bool(_STANDARD_UID.fullmatch(text)) or bool(_CODE_NAME.fullmatch(text))
            or (len(text) == 2 and text.isupper() and text.isalpha()) or text == "DICM"  # a VR such as 'OB', the prefix
            or (0 < len(text) <= 16 and _is_codec(text)))


def _redact(match: re.Match) -> str:
    literal = match.group(0)
    inner = literal[2:-1] if literal.startswith("b") else literal[1:-1]
    return literal if not literal.startswith("b") and _safe_literal(inner) else "'…'"


def describe(exc: BaseException, hide: Iterable[str] = ()) -> str:
    """``ExceptionClass: message`` of a library's exception, one line, at most MAX_REASON characters, with quoted
    values (and every string in ``hide``) redacted."""
    message = str(exc)
    for value in hide:
        if value and len(value) > 1:
            message = message.replace(value, "…")
    message = " ".join(_QUOTED.sub(_redact, message).split())
    if len(message) > MAX_REASON:
        message = message[: MAX_REASON - 1] + "…"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def reason_for(exc: Exception, hide: Iterable[str] = ()) -> str:
    """The rejection reason for a failure while reading one file; re-raises an error of the site itself."""
    if is_site_error(exc):
        raise exc
    return str(exc) if isinstance(exc, FileProblem) else describe(exc, hide)


class GuardedScan:
    """A source's scan (a generator) that stops at its first unexpected error instead of stopping the site's
    scan: the records yielded so far are kept, ``failure`` holds the reason, an error of the site still raises.
    Sources reject bad rows and files themselves; this is the backstop for what they did not foresee."""

    def __init__(self, items: Iterable[T], where: str) -> None:
        self.items, self.where = items, where
        self.failure: str | None = None

    def __iter__(self) -> Iterator[T]:
        try:
            yield from self.items
        except Exception as exc:
            self.failure = f"scan of this source stopped early ({reason_for(exc)}); the rest of the source was not read"


@contextmanager
def quiet_reader_warnings() -> Iterator[None]:
    """pydicom warns (and logs) about each odd value it reads and quotes the value (in a damaged header, that can be a
    patient's name), and logs each decoder's failure; nibabel logs each header fix it makes (a negative pixdim, ...).
    During a scan, a file's problems are its rejection or its notes (what the readers cannot get past, they raise),
    so none of that is printed."""
    loggers = [logging.getLogger(name) for name in READER_LOGGERS]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="pydicom")
            yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)
