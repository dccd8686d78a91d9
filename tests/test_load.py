"""The running app under load: 16 concurrent ``gradio_client`` clients, 10 mixed requests each.

The app runs as its own process (``python app.py``, default model, 127.0.0.1, a fresh store seeded
from data/seed). Every request must succeed with a correct answer; light requests (front,
selection) must still be answered while heavy ones (quick eval, export) queue; the server's peak
memory stays bounded. Figures go to ``$COALORA_TEST_OUTPUT/load/report.json``.
"""

from __future__ import annotations

import json
import math
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
OUT = Path(os.environ.get("COALORA_TEST_OUTPUT", ROOT / "test-output")) / "load"
CLIENTS, REQUESTS = 16, 10
MODEL = "smollm2-135m"
SEQLEN, WINDOWS = 128, 1  # a quick eval's convention here: one short window keeps the run bounded
EXPORTERS = 3
"""Clients whose mix includes an export (a SmolLM2 bundle is ~30-60 MB)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("load")
    port = _free_port()
    env = dict(os.environ, COALORA_STORE=str(tmp / "results.duckdb"), TMPDIR=str(tmp), GRADIO_TEMP_DIR=str(tmp / "g"),
               HF_HUB_OFFLINE="1", HF_TOKEN="hf_secret_token_must_not_be_logged")
    log = open(tmp / "app.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), "--model", MODEL],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 300
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError(f"app did not start: {(tmp / 'app.log').read_text()[-2000:]}") from None
            time.sleep(1)
    yield url, proc, tmp
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def test_sixteen_clients_ten_mixed_requests(app_server):
    from gradio_client import Client

    url, proc, tmp = app_server
    records: list[dict] = []
    failures: list[str] = []
    ppl_by_hash: dict[str, set] = {}
    lock = threading.Lock()

    def timed(kind: str, fn, *args, **kw):
        t0 = time.monotonic()
        out = fn(*args, **kw)
        with lock:
            records.append({"kind": kind, "start": t0, "end": time.monotonic()})
        return out

    def client_run(i: int) -> None:
        try:
            c = Client(url, verbose=False, download_files=str(tmp / f"dl{i}"))
            budget = round(2.5 + 0.25 * i, 2)
            view = [MODEL, "shakespeare", budget, ["coalora"], SEQLEN, WINDOWS]
            front = timed("front", c.predict, MODEL, budget, "coalora", 256, 8, api_name="/front")
            assert front["best"]["avg_bits"] <= budget + 1e-9 and len(front["measured"]) >= 40
            sel = timed("select", c.predict, *view, api_name="/select_best")
            h = sel[0]
            assert sel[4]["config_hash"] == h and sel[4]["avg_bits"] <= budget + 1e-9
            again = timed("select", c.predict, h, *view, api_name="/select")
            assert again[0] == h
            ev = timed("quick_eval", c.predict, h, *view, api_name="/quick_eval")
            ppl = ev[5]["measured_ppl"]
            assert math.isfinite(ppl) and ppl > 1
            with lock:
                ppl_by_hash.setdefault(h, set()).add(round(ppl, 6))
            ev2 = timed("quick_eval", c.predict, h, *view, api_name="/quick_eval")
            assert "cached result" in ev2[0] and ev2[5]["measured_ppl"] == ppl
            for _ in range(2):
                f2 = timed("front", c.predict, MODEL, budget, "coalora", SEQLEN, WINDOWS, api_name="/front")
                assert any(p["config_hash"] == h for p in f2["measured"])
            timed("select", c.predict, h, *view, api_name="/select")
            if i < EXPORTERS:
                files, _ = timed("export", c.predict, h, MODEL, "shakespeare", SEQLEN, WINDOWS, api_name="/export")
                zips = [f for f in files if str(f).endswith(".zip")]
                with zipfile.ZipFile(zips[0]) as z:  # the bundle's files sit in one top-level folder
                    top = z.namelist()[0].split("/")[0]
                    assert json.loads(z.read(f"{top}/coalora_config.json"))["config_hash"] == h
            else:
                timed("front", c.predict, MODEL, budget, "none", 256, 8, api_name="/front")
            timed("select", c.predict, *view, api_name="/select_best")
            c.close()
        except Exception as e:  # collected: every failure is reported, not just the first
            with lock:
                failures.append(f"client {i}: {type(e).__name__}: {e}")

    t0 = time.monotonic()
    threads = [threading.Thread(target=client_run, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    wall = time.monotonic() - t0
    peak = _peak_rss_mib(proc.pid)

    heavy = [r for r in records if r["kind"] in ("quick_eval", "export")]
    light = [r for r in records if r["kind"] in ("front", "select")]
    # a light request "under load" overlaps a heavy one that was in flight
    under = [r["end"] - r["start"] for r in light
             if any(h["start"] < r["end"] and r["start"] < h["end"] for h in heavy)]
    lat = sorted(r["end"] - r["start"] for r in light)
    report = {
        "clients": CLIENTS, "requests_per_client": REQUESTS, "requests": len(records), "failures": failures,
        "wall_s": wall, "server_peak_rss_mib": peak,
        "light_latency_s": {"p50": statistics.median(lat), "p95": lat[int(0.95 * (len(lat) - 1))], "max": lat[-1]},
        "light_under_load": {"n": len(under), "p50": statistics.median(under) if under else None,
                             "max": max(under) if under else None},
        "heavy_s": {"n": len(heavy), "mean": statistics.mean(h["end"] - h["start"] for h in heavy)},
        "distinct_configs_evaluated": len(ppl_by_hash),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "report.json").write_text(json.dumps(report, indent=2))
    print("load report:", json.dumps(report))
    assert not failures, failures
    assert len(records) == CLIENTS * REQUESTS
    assert all(len(v) == 1 for v in ppl_by_hash.values())  # one configuration, one perplexity
    assert under, "no light request was served while a heavy one was in flight"
    assert report["light_under_load"]["p50"] < report["heavy_s"]["mean"]
    assert peak < 8 * 1024, f"server peak RSS {peak:.0f} MiB"
    assert "hf_secret_token_must_not_be_logged" not in (tmp / "app.log").read_text()
    # downloads come only from the app's own export directory
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{url}gradio_api/file=/etc/passwd", timeout=10)
