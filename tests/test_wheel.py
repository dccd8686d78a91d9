"""The package as a user installs it: ``pip install .`` into a fresh virtualenv, then ``coalora serve``
started outside the checkout brings the app up with the committed default adapter and seed.

The fresh virtualenv borrows the test environment's third-party packages through a ``.pth`` file (a
second copy of torch would cost minutes and gigabytes, and is not what is under test); coalora itself,
``ui`` and the ``data/`` files are installed from the wheel, and the check runs from a directory that is
not the checkout, so nothing can be found through it.
"""

from __future__ import annotations

import json
import os
import site
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtualenv with coalora installed from a wheel of this checkout (not editable)."""
    d = tmp_path_factory.mktemp("wheel")
    venv = d / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "_borrowed_deps.pth").write_text(site.getsitepackages()[0] + "\n")
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(ROOT)], capture_output=True,
                       text=True, cwd=d)
    assert r.returncode == 0, r.stderr[-2000:]
    return venv


def test_installed_package_finds_its_data_outside_the_checkout(installed, tmp_path):
    py = installed / "bin" / "python"
    code = ("import coalora, coalora.paths as p, json; print(json.dumps({'pkg': coalora.__file__, "
            "'data': str(p.DATA_DIR), 'default': sorted(x.name for x in p.DEFAULT_DIR.iterdir()), "
            "'seed': sorted(x.name for x in p.SEED_DIR.iterdir()), 'tasks': p.TASKS_DIR.is_dir()}))")
    out = json.loads(subprocess.run([str(py), "-c", code], cwd=tmp_path, check=True, capture_output=True,
                                    text=True).stdout)
    assert not out["pkg"].startswith(str(ROOT)) and not out["data"].startswith(str(ROOT))
    assert "smollm2-135m-coalora.safetensors" in out["default"]
    assert "evaluations.parquet" in out["seed"] and out["tasks"]


def test_coalora_serve_from_the_wheel_brings_the_app_up(installed, tmp_path):
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "COALORA_STORE": str(tmp_path / "results.duckdb")}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([str(installed / "bin" / "coalora"), "serve", "--port", str(port)], cwd=tmp_path,
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline, config = time.monotonic() + 300, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5) as r:
                    config = json.loads(r.read())
                break
            except OSError:
                time.sleep(2)
        assert config is not None, (tmp_path / "serve.log").read_text()[-3000:]
        text = json.dumps(config)
        assert "smollm2-135m" in text and "Pareto" in text  # the explorer's own page, with the default model
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
