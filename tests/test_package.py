"""The package as people install it: build the wheel, pip-install it into a fresh venv, run `signoff demo`.

Slow (tens of seconds: the dependencies come from PyPI or pip's cache); `-m "not slow"` leaves it out.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.procs import ROOT
from tests.test_demo import DENY_REASON, audit_rows, section

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SOURCES = ["pyproject.toml", "README.md", "proxy", "bot"]  # what a clean checkout builds from


def clean_env() -> dict[str, str]:
    """This environment without the repo's venv or any Slack tokens (the demo must never post)."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLACK_")}


def build_wheel(tmp_path: Path) -> Path:
    """`pip wheel --no-deps` of a copy of the sources (a stale build/ in the checkout must not leak in)."""
    src = tmp_path / "src"
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(ROOT / name, src / name)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            "dist",
            str(src),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    [wheel] = (tmp_path / "dist").glob("mcp_signoff-*.whl")
    return wheel


def test_the_wheel_installs_into_a_fresh_venv_and_runs_the_demo(tmp_path: Path) -> None:
    started = time.monotonic()
    venv = tmp_path / "venv"
    # The venv is made while the wheel builds: both take seconds.
    making_venv = subprocess.Popen(
        [sys.executable, "-m", "venv", str(venv)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    wheel = build_wheel(tmp_path)
    assert making_venv.wait(120) == 0, making_venv.stdout.read() if making_venv.stdout else ""

    names = zipfile.ZipFile(wheel).namelist()
    for asset in ["proxy/web/approvals.html", "proxy/demo/signoff.yaml", "proxy/demo/policy.yaml"]:
        assert asset in names, f"{asset} is not in the wheel"

    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", str(wheel)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=240,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    built = time.monotonic() - started

    # The installed package, not the checkout: run from a folder where `proxy` is not importable.
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import proxy, importlib.resources as r; print(proxy.__file__); "
            "print(len(r.files('proxy').joinpath('web/approvals.html').read_text()))",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=60,
    )
    module, page_size = where.stdout.split()
    assert Path(module).is_relative_to(venv), where.stdout
    assert int(page_size) > 1000  # the approvals page the control port serves

    state = tmp_path / "state"
    demo = subprocess.run(
        [
            str(venv / "bin" / "signoff"),
            "demo",
            "--auto-approve",
            "1",
            "--any-ports",
            "--state-dir",
            str(state),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=90,
    )
    out = demo.stdout
    log = state / "gateway.log"
    context = f"{out}\n--- stderr ---\n{demo.stderr}\n--- gateway log ---\n" + (
        log.read_text() if log.exists() else "(none)"
    )
    assert demo.returncode == 0, context
    assert "ALLOWED" in section(out, 2), context
    assert "DENIED by signoff" in section(out, 3) and DENY_REASON in section(out, 3), context
    assert re.search(r"\[auto-approve\] alice approved cancel-job \(apr_\w+\): Approved\.", out), context
    assert "APPROVED after" in section(out, 4) and "job-7f3a is CANCELLED" in section(out, 4), context
    assert audit_rows(out) == {
        "list-jobs": ["allow", "ok", "-"],
        "delete-endpoint": ["deny", "denied", "-"],
        "cancel-job": ["require_approval", "ok", "alice"],
        "get-job": ["allow", "ok", "-"],
    }, context
    assert "Gateway stopped (exit status 0)" in out, context
    print(f"wheel built and installed in {built:.1f}s; with the demo {time.monotonic() - started:.1f}s")
