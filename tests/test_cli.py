"""The msa-lab command: info explains the backend, lab starts JupyterLab and prints its URL."""
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from msa_lab import cli

ROOT = Path(__file__).resolve().parent.parent


def test_info_names_versions_and_backend(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "backend[cpu]" in out
    assert re.search(r"backend\[cpu\] (torch|triton): \S", out)


def test_unknown_command_fails():
    with pytest.raises(SystemExit) as e:
        cli.main(["frobnicate"])
    assert e.value.code == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_lab_starts_jupyterlab_on_notebooks_and_prints_url(tmp_path):
    pytest.importorskip("jupyterlab")
    port = _free_port()
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path), JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"))
    env.pop("DISPLAY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "msa_lab.cli", "lab", "--port", str(port), "--no-browser"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    seen, url = [], None
    deadline = time.time() + 120
    try:
        while time.time() < deadline and url is None:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            m = re.search(rf"(http://127\.0\.0\.1:{port}/lab\?token=\w+)", line)
            url = m.group(1) if m else None
        assert url, "no URL printed:\n" + "".join(seen[-30:])
        assert any(f"notebook-dir={ROOT / 'notebooks'}" in s or "notebooks" in s for s in seen)
        import urllib.request

        # straight to loopback, whatever proxy the environment names; the server may need a moment
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        for attempt in range(30):
            try:
                with opener.open(url.replace("/lab?", "/api/contents?"), timeout=30) as r:
                    listing = r.read().decode()
                break
            except OSError:
                if proc.poll() is not None or attempt == 29:
                    raise
                time.sleep(1)
        assert "01_msa_tour.ipynb" in listing, "JupyterLab does not serve notebooks/"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
