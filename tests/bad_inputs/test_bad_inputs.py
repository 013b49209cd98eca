"""Every bad input gets one clear line, a non-zero exit, no traceback, before any model is
built, and loses nothing.

Each case of ``cases.py`` runs as a subprocess of the real command line (both launchers,
evaluate, predict, doctor, adapters, data.convert, data.check), all of them once, a few
at a time (``BAD_INPUTS_WORKERS``, default 3), in a session fixture; each test then checks
one case. Every file in the case's directory and in the shared fixture (checkpoint,
adapter, dataset, logs) is hashed before and after. ``BAD_INPUTS_REPORT=<file>`` writes
each case's class (clear / exit0 / traceback / unclear / late / lost) and time as JSON;
``BAD_INPUTS_ONLY=<regex>`` selects cases; ``BAD_INPUTS_TIMEOUT`` (s, default 600)
bounds each command; ``BAD_INPUTS_REPO=<checkout>`` runs the commands against another checkout's code.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tests.bad_inputs.cases import CASES, Case
from tests.bad_inputs.runner import BUILD_LINE, PYTHON, Result, base_env, run_all

pytestmark = pytest.mark.slow
#: ``BAD_INPUTS_ONLY=<regex>``: run only the cases whose id matches (e.g. ``^predict/``).
SELECTED = [c for c in CASES if re.search(os.environ.get("BAD_INPUTS_ONLY", ""), c.id)]


def classify(case: Case, r: Result) -> str:
    """The class of an outcome: ``clear`` is what every case must be."""
    text = r.stderr + r.stdout
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    if r.returncode == 0:
        return "exit0"
    if r.changed:
        return "lost"
    if case.stock:
        if not lines or not re.search(case.pattern, lines[-1], re.I):
            return "traceback" if "Traceback" in r.stderr else "unclear"
        return "clear"
    if "Traceback" in r.stderr:
        return "traceback"
    if not re.search(case.pattern, text, re.S | re.M | re.I):
        return "unclear"
    if any(b in text for b in BUILD_LINE):
        return "late"
    return "clear"


@pytest.fixture(scope="session")
def results(fixture_root, tmp_path_factory):
    cases_root = tmp_path_factory.mktemp("cases")
    env = base_env(fixture_root / "cache")

    def prepare(case: Case):
        d = cases_root / case.id.replace("/", "__")
        d.mkdir()
        if case.setup is not None:
            case.setup(d, fixture_root)
        argv = [PYTHON] + [a.format(d=d, fx=fixture_root) for a in case.args]
        return argv, d, env, [d, fixture_root]

    out = run_all(SELECTED, prepare)
    report = os.environ.get("BAD_INPUTS_REPORT")
    if report:
        rows = {c.id: {"class": classify(c, out[c.id]), "seconds": round(out[c.id].seconds, 1),
                       "rc": out[c.id].returncode, "needs": c.needs,
                       "last": (out[c.id].stderr.strip().splitlines() or [""])[-1][:300]}
                for c in SELECTED}
        Path(report).write_text(json.dumps(rows, indent=1))
    return out


def test_enough_cases():
    assert len(CASES) >= 80
    assert len({c.id for c in CASES}) == len(CASES)
    tools = {c.args[1] for c in CASES}
    assert {"sam3_lora_plugin.train", "sam3.train.train", "sam3_lora_plugin.evaluate",
            "sam3_lora_plugin.predict", "sam3_lora_plugin.doctor", "sam3_lora_plugin.adapters",
            "sam3_lora_plugin.data.convert", "sam3_lora_plugin.data.check"} <= tools


@pytest.mark.parametrize("case", SELECTED, ids=[c.id for c in SELECTED])
def test_bad_input(case: Case, results, record_property):
    r = results[case.id]
    record_property("seconds", round(r.seconds, 1))
    tail = (r.stderr + r.stdout)[-3000:]
    if case.needs and classify(case, r) != "clear":
        pytest.xfail(f"needs {case.needs}")
    assert r.returncode != 0, f"exit 0 on bad input ({r.seconds:.1f} s):\n{tail}"
    assert not r.changed, f"protected files changed: {r.changed}"
    if case.stock:
        last = [line for line in r.stderr.splitlines() if line.strip()][-1]
        assert re.search(case.pattern, last, re.I), f"last line is not our message: {last!r}"
        return
    assert "Traceback" not in r.stderr, tail
    assert re.search(case.pattern, r.stderr + r.stdout, re.S | re.M | re.I), \
        f"no message matching {case.pattern!r}:\n{tail}"
    built = [b for b in BUILD_LINE if b in r.stderr + r.stdout]
    assert not built, f"error came after the model was built ({r.seconds:.1f} s): {built}"
