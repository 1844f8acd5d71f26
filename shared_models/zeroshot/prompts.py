"""The prompt bank: descriptive positive and negative prompts for every class of a label set (a data file), and
the prompt-generator interface. ``TemplatePromptGenerator`` (deterministic, in the box) gives CheXzero's pair
("{name}", "no {name}") and a few report-style templates; a site-local LLM can implement ``PromptGenerator`` (it
must not call the network: fedchest runs offline)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

from shared_models.ontology import LabelSet, load_label_set, normalise_term

TEMPLATES = (("{}", "no {}"), ("findings consistent with {}", "no evidence of {}"),
             ("chest radiograph showing {}", "chest radiograph without {}"))


class PromptError(ValueError):
    """A prompt file that cannot be used (names the file, the class and what was expected)."""


class PromptGenerator(Protocol):
    def prompts(self, class_name: str) -> tuple[list[str], list[str]]:
        """(positive prompts, negative prompts) for one class."""
        ...


class TemplatePromptGenerator:
    """CheXzero's pair and report-style templates on the lower-case class name."""

    def __init__(self, templates: tuple[tuple[str, str], ...] = TEMPLATES) -> None:
        self.templates = templates

    def prompts(self, class_name: str) -> tuple[list[str], list[str]]:
        name = class_name.lower()
        return [p.format(name) for p, _ in self.templates], [n.format(name) for _, n in self.templates]


@dataclass(frozen=True)
class PromptBank:
    """Descriptive prompts per class (every class of ``label_set``), usable as a ``PromptGenerator``."""

    label_set: LabelSet
    positive: dict[str, tuple[str, ...]]
    negative: dict[str, tuple[str, ...]]
    source: str

    def prompts(self, class_name: str) -> tuple[list[str], list[str]]:
        return list(self.positive[class_name]), list(self.negative[class_name])


def _strings(value, where: str, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise PromptError(f"{where}: `{key}` must be a non-empty list of non-empty strings, got {value!r}")
    return tuple(v.strip() for v in value)


def load_prompt_bank(label_set: str = "cxrlt2026", path: str | Path | None = None) -> PromptBank:
    """The packaged bank for ``label_set`` (or a file), checked against the label set."""
    ls = load_label_set(label_set)
    if path is None:
        ref = resources.files("shared_models.zeroshot") / "data" / f"prompts_{label_set}.toml"
        if not ref.is_file():
            raise PromptError(f"no packaged prompt bank for label set {label_set!r} (expected "
                              f"data/prompts_{label_set}.toml)")
        text, where = ref.read_text(encoding="utf-8"), f"prompts_{label_set}.toml"
    else:
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise PromptError(f"{where}: cannot read ({exc.strerror})") from None
    try:
        table = tomllib.loads(text).get("classes", {})
    except tomllib.TOMLDecodeError as exc:
        raise PromptError(f"{where}: not valid TOML ({exc})") from None
    by_key = {normalise_term(c): c for c in ls.classes}
    pos: dict[str, tuple[str, ...]] = {}
    neg: dict[str, tuple[str, ...]] = {}
    for name, entry in table.items():
        cls = by_key.get(normalise_term(name))
        if cls is None:
            raise PromptError(f"{where}: class {name!r} is not in label set {ls.name!r}")
        pos[cls] = _strings(entry.get("positive"), f"{where} [classes.{name!r}]", "positive")
        neg[cls] = _strings(entry.get("negative"), f"{where} [classes.{name!r}]", "negative")
    missing = [c for c in ls.classes if c not in pos]
    if missing:
        raise PromptError(f"{where}: no prompts for {len(missing)} class(es) of {ls.name!r}: {', '.join(missing)}")
    return PromptBank(ls, pos, neg, where)
