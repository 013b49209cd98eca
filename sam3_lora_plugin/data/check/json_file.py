"""JSON structure and categories: unreadable files, missing sections and fields,
duplicate ids, and category names (SAM3 prompts with the name)."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

from .report import Findings, register_defects

__all__ = ["DEFECTS", "check_categories", "is_code_like_name", "is_int", "is_number", "load_json"]

DEFECTS = register_defects({
    "unreadable_json": ("error", "annotation file cannot be read as COCO JSON",
                        "re-export the dataset or fix the file; it must be one JSON object with "
                        "'images', 'annotations' and 'categories' lists"),
    "missing_section": ("error", "top-level 'images', 'annotations' or 'categories' missing or not a list",
                        "add the section as a JSON list"),
    "missing_field": ("error", "entries with missing or malformed required fields",
                      "images need int id, file_name, width, height; annotations need int id, image_id, "
                      "category_id, bbox, area, iscrowd (0/1); categories need int id and name"),
    "duplicate_id": ("error", "duplicate ids", "give every image, annotation and category a unique id"),
    "blank_category_name": ("error", "blank category names (SAM3 prompts with the name)", "name every category"),
    "code_like_name": ("warning", "category names that look like codes; SAM3 uses the name as the text prompt",
                       "rename to words describing the object (convert CLI: --rename old=new)"),
    "duplicate_category_name": ("warning", "several category ids share a name (identical prompts, "
                                "contradictory targets)", "merge them into one category"),
})

_CODE_LIKE = re.compile(r"(?:[a-z]{0,6}[\s_.-]?)?\d+|[a-z]", re.IGNORECASE)


def is_code_like_name(name: str) -> bool:
    """True for names such as ``0``, ``class_3``, ``c12``, ``obj1``, ``x``: poor text prompts."""
    return bool(_CODE_LIKE.fullmatch(name.strip()))


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_int(v: Any) -> bool:
    """An int (not a bool)."""
    return isinstance(v, int) and not isinstance(v, bool)


def load_json(path: Path, found: Findings) -> dict[str, Any] | None:
    """The file's top-level JSON object, or None after recording why it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        found.add("unreadable_json", "file not found")
        return None
    except (OSError, UnicodeDecodeError) as exc:
        found.add("unreadable_json", f"{type(exc).__name__}: {exc}")
        return None
    except json.JSONDecodeError as exc:
        found.add("unreadable_json", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")
        return None
    if not isinstance(data, dict):
        found.add("unreadable_json", f"top level is a {type(data).__name__}, not an object")
        return None
    return data


def check_categories(cats: list[Any], found: Findings) -> dict[Any, str]:
    """Check ``categories``; returns category id -> name for the well-formed ones."""
    names: dict[Any, str] = {}
    for c in cats:
        if not isinstance(c, dict) or not is_int(c.get("id")) or not isinstance(c.get("name"), str):
            found.add("missing_field", f"category {str(c)[:60]}")
            continue
        if c["id"] in names:
            found.add("duplicate_id", f"category id {c['id']}")
            continue
        names[c["id"]] = name = c["name"]
        if not name.strip():
            found.add("blank_category_name", f"category id {c['id']}")
        elif is_code_like_name(name):
            found.add("code_like_name", repr(name))
    for name, n in Counter(n.strip().lower() for n in names.values() if n.strip()).items():
        if n > 1:
            found.add("duplicate_category_name", f"{name!r} x{n}")
    return names
