"""The checker's result types: ``Issue``, ``CheckReport``, ``DatasetError``.

Every defect has a code; each checking module registers its codes with
``register_defects`` as ``code -> (severity, what is wrong, how to fix it)``, next to
the code that finds them. ``Findings`` collects one file's defects while it is checked.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DEFECTS", "DatasetError", "Issue", "CheckReport", "Findings", "register_defects"]

#: code -> (severity: "error" | "warning", what is wrong, how to fix it), for every module.
DEFECTS: dict[str, tuple[str, str, str]] = {}


def register_defects(defects: dict[str, tuple[str, str, str]]) -> dict[str, tuple[str, str, str]]:
    """Add a module's defect codes to ``DEFECTS``; returns ``defects``.

    Raises:
        ValueError: A code is registered twice or its severity is not error/warning.
    """
    for code, (severity, _, _) in defects.items():
        if code in DEFECTS:
            raise ValueError(f"defect code {code!r} registered twice")
        if severity not in ("error", "warning"):
            raise ValueError(f"defect {code!r}: severity must be 'error' or 'warning', got {severity!r}")
    DEFECTS.update(defects)
    return defects


class DatasetError(ValueError):
    """A dataset failed ``check_coco``/``check_dataset``; the message lists the problems."""


@dataclass
class Issue:
    """One kind of defect found in one file: count and first offenders."""

    code: str
    path: Path
    count: int
    examples: list[str] = field(default_factory=list)

    @property
    def severity(self) -> str:
        return DEFECTS[self.code][0]

    @property
    def title(self) -> str:
        return DEFECTS[self.code][1]

    @property
    def fix(self) -> str:
        return DEFECTS[self.code][2]

    def describe(self) -> str:
        """``title: count (first: ...)``."""
        tail = f" (first: {'; '.join(self.examples)})" if self.examples else ""
        return f"{self.title}: {self.count}{tail}"


@dataclass
class CheckReport:
    """Result of checking one COCO file, or a dataset (``parts`` = one report per split)."""

    path: Path
    issues: list[Issue] = field(default_factory=list)
    images: int = 0
    annotations: int = 0
    category_names: dict[Any, str] = field(default_factory=dict)
    parts: list[CheckReport] = field(default_factory=list)

    def _all(self) -> list[Issue]:
        return self.issues + [i for p in self.parts for i in p._all()]

    @property
    def errors(self) -> list[Issue]:
        """Error issues, this report's and its parts'."""
        return [i for i in self._all() if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        """Warning issues, this report's and its parts'."""
        return [i for i in self._all() if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there are no errors (warnings allowed)."""
        return not self.errors

    def format(self) -> str:
        """Readable multi-line report."""
        n_err, n_warn = len(self.errors), len(self.warnings)
        head = (f"{self.path}: {self.images} images, {self.annotations} annotations, "
                f"{len(self.category_names)} categories" if not self.parts else f"dataset {self.path}")
        lines = [f"{head} -- {n_err} error(s), {n_warn} warning(s)"]
        for issue in sorted(self.issues, key=lambda i: i.severity != "error"):
            lines.append(f"  {issue.severity.upper():7} [{issue.code}] {issue.describe()}")
            lines.append(f"          fix: {issue.fix}")
        lines += ["  " + line for p in self.parts for line in p.format().splitlines()]
        return "\n".join(lines)

    def raise_if_errors(self) -> None:
        """Raise ``DatasetError`` naming every error (file, problem, count, offenders, fix)."""
        errors = self.errors
        if errors:
            body = "\n".join(f"- {i.path}: {i.describe()}. Fix: {i.fix}" for i in errors)
            raise DatasetError(f"dataset check of {self.path} found {len(errors)} error(s):\n{body}")


class Findings:
    """Defects found in one file so far: counts and the first offenders per code."""

    def __init__(self, path: Path, max_examples: int) -> None:
        self.path, self.max_examples = path, max_examples
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, code: str, example: str = "", count: int = 1) -> None:
        """Record ``count`` occurrences of defect ``code``; ``example`` names the offender."""
        if code not in DEFECTS:
            raise KeyError(f"unknown defect code {code!r}")
        self.counts[code] += count
        ex = self.examples.setdefault(code, [])
        if example and len(ex) < self.max_examples:
            ex.append(example)

    def issues(self) -> list[Issue]:
        """One ``Issue`` per code found, in first-found order."""
        return [Issue(c, self.path, n, self.examples[c]) for c, n in self.counts.items()]
