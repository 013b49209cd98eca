"""What a benchmark writes: its JSON (opening with the machine and the arguments, written
whole or not at all) and its PNG (Agg backend, titled, closed)."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .machine import machine_info

__all__ = ["get_pyplot", "report_header", "save_figure", "write_json", "write_report"]


def report_header(benchmark: str, args: Any, device: Optional[str] = None,
                  skip: Sequence[str] = ("only", "child_out")) -> dict[str, Any]:
    """The fields every benchmark JSON opens with: name, UTC date, machine, arguments
    (``Path`` values as strings; the ``skip`` ones, internal, left out)."""
    return {"benchmark": benchmark,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(device),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                     if k not in skip}}


def write_json(path: Union[str, Path], report: Any, indent: int = 2) -> Path:
    """Write ``report`` as indented, newline-terminated JSON through a temporary file
    renamed into place (a result read while a long benchmark runs is always whole JSON);
    creates the folder. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=indent) + "\n")
    os.replace(tmp, path)
    return path


def write_report(out_dir: Union[str, Path], stem: str, report: dict[str, Any]) -> Path:
    """Write ``<out_dir>/<stem>.json`` (:func:`write_json`); returns the path."""
    return write_json(Path(out_dir) / f"{stem}.json", report)


def get_pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend (PNG output, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Union[str, Path], title: str, dpi: int = 120,
                title_size: Union[int, str] = 10) -> None:
    """Title (``title_size``: points or a matplotlib size name), tight layout, PNG of
    ``dpi`` at ``path``, and close the figure."""
    plt = get_pyplot()
    fig.suptitle(title, fontsize=title_size)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
