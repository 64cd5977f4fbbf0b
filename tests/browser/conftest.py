"""Fixtures for the real-browser tests: a JupyterLab server on a free port and the system Chromium.

Nothing is downloaded: Playwright (the Python package and its bundled driver) drives the Chromium
that the OS ships (Debian's ``chromium``), launched by ``executable_path``. Without playwright or
Chromium the tests are skipped with the reason; ``MSA_LAB_REQUIRE_BROWSER=1`` (set by .ci/run)
turns that skip into a failure. The server and the browser are stopped even when a test fails.
"""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = ROOT / "notebooks"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
SERVER_START_S = 90  # JupyterLab on a busy 2-core machine starts in seconds; this bounds a hang
# Lab settings for the test: no autosave (running the notebooks must never write them back into the
# repo), no news / update pop-ups over the screenshots.
# autoStartDefaultKernel: without it JupyterLab sometimes asks "Select Kernel" for the second notebook opened (a
# clean-clone run of the ninth session: the dialog took every click on 03 for 60 s), though its kernelspec names one
LAB_SETTINGS = {"@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": '{"autosave": false}',
                "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": '{"autoStartDefaultKernel": true}'}
PAGE_CONFIG = '{"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": true}}'


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives JupyterLab in a real Chromium (tests/browser/)")


def unavailable(reason: str):
    """Skip with the reason, or fail when MSA_LAB_REQUIRE_BROWSER=1 (CI installs Chromium and wants this run)."""
    if os.environ.get("MSA_LAB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}. MSA_LAB_REQUIRE_BROWSER=1 is set, so this is a failure, not a skip.", pytrace=False)
    pytest.skip(reason)


def find_chromium():
    """MSA_LAB_CHROMIUM, else chromium / chromium-browser on PATH, else None."""
    env = os.environ.get("MSA_LAB_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def chromium_path():
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        unavailable("the browser test needs the Python package playwright: pip install 'msa-lab[dev]' "
                    "(no browser download needed; it drives the system Chromium)")
    path = find_chromium()
    if path is None:
        unavailable("no Chromium found (looked for MSA_LAB_CHROMIUM, chromium, chromium-browser); on Debian: "
                    "apt-get install -y chromium")
    return path


class Lab:
    """A running JupyterLab: ``url(path)`` builds a tokenised URL; ``log_tail()`` for failure messages."""

    def __init__(self, proc, port, token, log_path):
        self.proc, self.port, self.token, self.log_path = proc, port, token, log_path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}?token={self.token}"

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no server log)"


@pytest.fixture(scope="module")
def lab(chromium_path, tmp_path_factory):
    """JupyterLab on notebooks/, with runtime, config, settings and workspaces in a temp folder."""
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        unavailable("the browser test needs jupyterlab: pip install 'msa-lab[lab]'")
    tmp = tmp_path_factory.mktemp("lab")
    for rel, text in LAB_SETTINGS.items():
        (tmp / "settings" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "settings" / rel).write_text(text)
    (tmp / "config" / "labconfig").mkdir(parents=True)
    (tmp / "config" / "labconfig" / "page_config.json").write_text(PAGE_CONFIG)
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), JUPYTER_CONFIG_DIR=str(tmp / "config"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
               IPYTHONDIR=str(tmp / "ipython"))
    env.pop("TRITON_INTERPRET", None)  # tests/conftest.py sets it; the notebooks run as a user's would
    before = {p: p.read_bytes() for p in NOTEBOOK_DIR.glob("*.ipynb")}
    token, port = secrets.token_hex(16), free_port()
    log_path = tmp / "jupyterlab.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--ServerApp.token={token}",
             f"--port={port}", "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1",
             f"--notebook-dir={NOTEBOOK_DIR}"],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # own group: kernels too
    server = Lab(proc, port, token, log_path)
    try:
        _wait_for_server(server)
        yield server
    finally:
        _stop(proc)
        changed = [p.name for p, data in before.items() if p.read_bytes() != data]
        for p in changed:  # the settings above disable autosave; this only guards against a regression
            p.write_bytes(before[p])
        assert not changed, f"the browser test wrote into {changed} (restored); JupyterLab autosave must stay off"


def _wait_for_server(server: Lab) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"JupyterLab exited with code {server.proc.returncode}:\n{server.log_tail()}", pytrace=False)
        try:
            with urllib.request.urlopen(server.url("api/status"), timeout=3) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer within {SERVER_START_S} s:\n{server.log_tail()}", pytrace=False)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (the server and its kernels), SIGKILL what is left after 20 s."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # kernels that outlived the server
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser(chromium_path):
    """The system Chromium through Playwright's bundled driver (no browser download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        try:
            b = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, timeout=60_000)
        except Exception as e:  # noqa: BLE001 - an unusable Chromium is an environment problem
            unavailable(f"Chromium at {chromium_path} did not start under Playwright: {type(e).__name__}: {e}")
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(60_000)
    try:
        yield pg
    finally:
        ctx.close()


@pytest.fixture(scope="session")
def artifacts():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
