"""A headless Chromium for the browser tests: find it, or install Debian's package.

Playwright's own browser download (``playwright install``) fetches from a CDN that a machine
with only package registries cannot reach, so the tests drive Debian's ``chromium`` through
Playwright's ``executable_path``. When no Chromium is there and we are root on a Debian-like
system, :func:`chromium_executable` installs it with apt-get (once per machine: a few hundred MB,
about a minute), under a lock so that parallel test workers do not both run apt.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

#: Where a Chromium may already be; ``WHISPERS_CHROMIUM`` overrides.
CANDIDATES: tuple[str, ...] = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
#: The machine's network is closed: without these Chromium keeps trying to reach Google's
#: services (component updates, sync, QUIC probes) and floods refused connections.
LAUNCH_ARGS: tuple[str, ...] = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
APT_TIMEOUT_S = 900


def _found() -> Path | None:
    override = os.environ.get("WHISPERS_CHROMIUM")
    for cand in ((override,) if override else CANDIDATES):
        if cand and os.access(cand, os.X_OK):
            return Path(cand)
    return None


def chromium_executable() -> tuple[Path | None, str]:
    """(path, "") when a Chromium is available (installing it if needed and possible), else
    (None, the reason it could not be had)."""
    found = _found()
    if found is not None:
        return found, ""
    if os.environ.get("WHISPERS_CHROMIUM"):
        return None, f"WHISPERS_CHROMIUM={os.environ['WHISPERS_CHROMIUM']} is not executable"
    if shutil.which("apt-get") is None:
        return None, "no Chromium at /usr/bin/chromium and no apt-get to install Debian's package"
    if os.geteuid() != 0:
        return None, ("no Chromium at /usr/bin/chromium and not root: run "
                      "`sudo apt-get install -y chromium` once")
    lock_path = Path(tempfile.gettempdir()) / "whispers-lab-chromium-install.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel worker may be installing right now
        found = _found()
        if found is not None:
            return found, ""
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"]):
            try:
                done = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                      timeout=APT_TIMEOUT_S, check=False)
            except subprocess.TimeoutExpired:
                return None, f"`{' '.join(cmd)}` did not finish in {APT_TIMEOUT_S} s"
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                return None, f"`{' '.join(cmd)}` failed ({done.returncode}): {' | '.join(tail)}"
    found = _found()
    if found is None:
        return None, "apt-get installed chromium but no executable appeared at /usr/bin/chromium"
    return found, ""
