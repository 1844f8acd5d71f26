"""The site's privacy policy (``[privacy]`` in site.toml) and its privacy ledger.

The site, not the run, decides: a run asking for weaker DP than the policy allows is refused; a round that
would take the site past its epsilon budget is declined; parameter groups the policy withholds never leave;
counts below ``min_count`` leave as 0. The ledger is a SQLite file in the site's work dir: every DP round the
site trained (run, round, head, noise multiplier, sample rate, steps, epsilon after it) across runs and
restarts, so that the accountant composes everything the site's data has ever been used for.
"""

from __future__ import annotations

import math
import sqlite3
import time
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from shared_models.privacy import ACCOUNTANTS, epsilon


class PolicyRefusal(RuntimeError):
    """The site refuses this request under its privacy policy (the message says which rule and why)."""


def _flag(value: Any, where: str, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where}: [privacy] {name} = {value!r}; expected true or false")
    return value


def suppress_counts(counts: dict, k: int) -> dict:
    """Counts below k as the string "<k" (for anything meant to leave the site)."""
    return {key: (v if v >= k else f"<{k}") for key, v in counts.items()}

@dataclass(frozen=True)
class PrivacyPolicy:
    min_count: int = 5
    require_dp: bool = False
    min_noise_multiplier: float = 0.0
    max_grad_norm: float = math.inf  # the largest clipping norm the site accepts
    epsilon_budget: float = math.inf  # over every run, at ``delta``
    delta: float = 1e-5
    accountant: str = "rdp"
    withhold: tuple[str, ...] = ()  # parameter groups (glob patterns) that never leave the site
    dp_exact_evaluation: bool = False  # under DP, send exact evaluation summaries (outside the accountant)

    @classmethod
    def from_table(cls, table: dict[str, Any], where: str) -> "PrivacyPolicy":
        known = {"min_count", "require_dp", "min_noise_multiplier", "max_grad_norm", "epsilon_budget", "delta",
                 "accountant", "withhold", "dp_exact_evaluation"}
        unknown = set(table) - known
        if unknown:
            raise ValueError(f"{where}: unknown [privacy] field(s) {sorted(unknown)}; expected some of {sorted(known)}")
        try:
            policy = cls(
                min_count=int(table.get("min_count", 5)),
                require_dp=bool(table.get("require_dp", False)),
                min_noise_multiplier=float(table.get("min_noise_multiplier", 0.0)),
                max_grad_norm=float(table.get("max_grad_norm", math.inf)),
                epsilon_budget=float(table.get("epsilon_budget", math.inf)),
                delta=float(table.get("delta", 1e-5)),
                accountant=str(table.get("accountant", "rdp")),
                withhold=tuple(str(g) for g in table.get("withhold", ())),
                dp_exact_evaluation=_flag(table.get("dp_exact_evaluation", False), where, "dp_exact_evaluation"),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: [privacy] has a value of the wrong type ({exc})") from None
        if policy.accountant not in ACCOUNTANTS:
            raise ValueError(f"{where}: [privacy] accountant = {policy.accountant!r}; expected one of {ACCOUNTANTS}")
        if not 0 < policy.delta < 1 or policy.epsilon_budget <= 0 or policy.min_count < 0:
            raise ValueError(f"{where}: [privacy] needs 0 < delta < 1, epsilon_budget > 0 and min_count >= 0")
        return policy

    def withheld(self, group: str) -> bool:
        return any(fnmatch(group, pattern) for pattern in self.withhold)

    def check_run(self, dp: bool, noise_multiplier: float, max_grad_norm: float) -> None:
        """Refuse a run whose DP settings are weaker than this policy allows."""
        if self.require_dp and not dp:
            raise PolicyRefusal("site policy requires differential privacy (require_dp = true) and this run trains "
                                "without it; start the run with dp = true")
        if not dp:
            return
        if noise_multiplier < self.min_noise_multiplier:
            raise PolicyRefusal(f"run asks for noise multiplier {noise_multiplier:g}; site policy requires at least "
                                f"{self.min_noise_multiplier:g}")
        if max_grad_norm > self.max_grad_norm:
            raise PolicyRefusal(f"run asks for clipping norm {max_grad_norm:g}; site policy allows at most "
                                f"{self.max_grad_norm:g}")

    def suppress(self, count: float) -> float:
        """A count as it may leave the site: below ``min_count`` (and not zero) it leaves as 0."""
        return 0.0 if 0 < count < self.min_count else count


class PrivacyLedger:
    """Append-only record of the site's DP training, in ``<work_dir>/privacy-ledger.sqlite``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("CREATE TABLE IF NOT EXISTS entries (id INTEGER PRIMARY KEY, created REAL, run TEXT, "
                        "round INTEGER, head TEXT, noise_multiplier REAL, sample_rate REAL, steps INTEGER, "
                        "delta REAL, epsilon_after REAL)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def history(self) -> list[tuple[float, float, int]]:
        with self._connect() as con:
            return [tuple(r) for r in con.execute(
                "SELECT noise_multiplier, sample_rate, steps FROM entries ORDER BY id")]

    def entries(self) -> list[dict]:
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute("SELECT * FROM entries ORDER BY id")]

    def spent(self, delta: float, accountant: str = "rdp") -> float:
        return epsilon(self.history(), delta, accountant)

    def projected(self, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
                  accountant: str = "rdp") -> float:
        """Epsilon after one more round of ``steps`` DP-SGD steps."""
        return epsilon([*self.history(), (noise_multiplier, sample_rate, steps)], delta, accountant)

    def append(self, run: str, rnd: int, head: str, noise_multiplier: float, sample_rate: float, steps: int,
               delta: float, accountant: str = "rdp") -> float:
        after = self.projected(noise_multiplier, sample_rate, steps, delta, accountant)
        with self._connect() as con:
            con.execute("INSERT INTO entries (created, run, round, head, noise_multiplier, sample_rate, steps, delta, "
                        "epsilon_after) VALUES (?,?,?,?,?,?,?,?,?)",
                        (time.time(), run, rnd, head, noise_multiplier, sample_rate, steps, delta, after))
        return after
