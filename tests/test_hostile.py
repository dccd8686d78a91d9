"""The public app under hostile input (issue 19): the app runs as its own process, as a Space runs it
(``python app.py``, the default model, a fresh store seeded from data/seed, ``$SPACE_HOST`` set), and
this module replays what an attacker can send, through ``gradio_client`` and raw HTTP:

* markup (links, images, scripts) in every string argument and in the share link's query
  parameters: every answer is one sentence with the markup escaped, never a live tag;
* spoofed ``Referer`` / ``Host`` / ``X-Forwarded-Host``: share links still point at the Space;
* huge strings (quoted back as a short prefix; bodies over the cap refused), NaN, infinity,
  negative and fractional numbers where whole ones go, lists and dicts where text goes, file
  references, deep nesting, unknown, hub and test model names, too many and too few arguments:
  one clear sentence each, never "internal error", no traceback in the server log;
* path traversal, absolute paths and files of another app process in ``/gradio_api/file=``
  URLs, uploads: refused; the store is unchanged by rejected requests and the app alive afterwards.

A second app process (the tiny model) checks that one process never serves another's files, that a
dead process's scratch directory is swept and that a stopped process leaves none behind.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m"
SPACE_HOST = "user-coalora.hf.space"
MARKUP = ['<a href="http://evil.example/phish">Log in again</a>', "<img src=x onerror=alert(1)>",
          "<script>alert(1)</script>", "<b style='font-size:99px'>X</b>"]
TAGS = ("<a ", "<img", "<script", "<b ", "<svg", "<iframe")
"""What must never come back raw in any answer (the payloads' tags)."""
FRONT = {"model": MODEL, "budget": 4.0, "method": "coalora", "seqlen": 256, "windows": 8, "eval_set": "shakespeare",
         "metric": "ppl"}
VIEW = {"model": MODEL, "eval_set": "shakespeare", "budget": 4.0, "methods": ["coalora"], "seqlen": 256, "windows": 8,
        "metric": "ppl"}


# ---- the app as its own process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class App:
    """``python app.py`` on a free port with its own TMPDIR and store; its log in ``log``."""

    def __init__(self, tmp: Path, model: str, store: Path, name: str, **env: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = tmp / f"{name}.log"
        e = {k: v for k, v in os.environ.items() if k not in ("SPACE_HOST", "COALORA_PUBLIC_URL", "GRADIO_TEMP_DIR")}
        e.update(COALORA_STORE=str(store), TMPDIR=str(tmp), HF_HUB_OFFLINE="1", **env)
        self._out = open(self.log, "w")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(self.port), "--model", model],
                                     cwd=ROOT, env=e, stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=5)
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.proc.kill()
                    raise RuntimeError(f"app did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.5)
        self.scratch = next(tmp.glob(f"coalora-app-{self.proc.pid}-*"))

    def stop(self) -> int:
        """SIGTERM (what a Space sends), then the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode


def _store_snapshot(path: Path) -> dict[str, Any]:
    from coalora.store import Store

    s = Store(path)
    try:
        return {"models": set(s.models()), "configs": s.count("configs"), "evaluations": s.count("evaluations")}
    finally:
        s.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    store = tmp / "results.duckdb"
    before = _store_snapshot(store)  # created and seeded here, so what the app adds can be seen
    a = App(tmp, MODEL, store, "app", SPACE_HOST=SPACE_HOST)
    a.tmp, a.store, a.before = tmp, store, before
    yield a
    a.stop()


# ---- talking to it


def _http(url: str, body: bytes | None = None, headers: dict | None = None, method: str | None = None):
    """(status, body text) of one request; HTTP errors are answers too."""
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def call(app: App, api: str, data: Any = None, raw: str | None = None, headers: dict | None = None):
    """``/gradio_api/call/<api>`` by raw HTTP: ("complete", outputs), ("error", message) or
    (HTTP status, body) when the request itself is refused. Every answer is checked by :func:`clean`."""
    body = raw if raw is not None else json.dumps({"data": data})
    h = {"Content-Type": "application/json", **(headers or {})}
    status, text = _http(f"{app.url}gradio_api/call/{api}", body.encode("utf-8", "surrogatepass"), h)
    clean(text)
    if status != 200:
        return status, text
    event_id = json.loads(text)["event_id"]
    status, text = _http(f"{app.url}gradio_api/call/{api}/{event_id}", headers=headers)
    clean(text)
    event, payload = None, None
    for line in text.splitlines():
        if line.startswith("event: "):
            event = line[7:].strip()
        elif line.startswith("data: ") and event in ("complete", "error"):
            payload = json.loads(line[6:])
    if event == "error":
        message = payload.get("error") if isinstance(payload, dict) else payload
        return "error", message
    return event, payload


def _announce(app: App, api: str, size: int | None) -> tuple[int, str]:
    """Announce a body of ``size`` bytes (None: chunked) and send none of it: the answer comes
    from the headers alone, as it must for a client that would send a gigabyte."""
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=60)
    try:
        conn.putrequest("POST", f"/gradio_api/call/{api}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader(*(("Content-Length", str(size)) if size is not None else ("Transfer-Encoding", "chunked")))
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def clean(text: str) -> None:
    """No payload tag comes back raw, decoded or not."""
    low = text.lower()
    for form in (low, low.encode().decode("unicode_escape", "ignore")):
        assert not any(t in form for t in TAGS), f"raw markup in an answer: {text[:300]}"


def refused(answer, *expect: str) -> str:
    """An error answer: one short escaped sentence naming the problem, never an internal error."""
    kind, message = answer
    assert kind == "error", f"accepted: {str(answer)[:300]}"
    assert isinstance(message, str) and message, f"no message: {answer}"
    assert "<" not in message and ">" not in message, message
    assert "internal error" not in message and "Traceback" not in message, message
    assert len(message) < 400, f"{len(message)} characters: {message[:200]}"
    for e in expect:
        assert e in message, f"{e!r} not in {message!r}"
    return message


def front(**kw) -> list:
    return list({**FRONT, **kw}.values())


def view(config_hash: str | None = None, **kw) -> list:
    v = list({**VIEW, **kw}.values())
    return v if config_hash is None else [config_hash, *v]


def quick(config_hash: str, task_docs=0, **kw) -> list:
    """The arguments of ``quick_eval``: a selection's view and the lm-eval task documents."""
    return [*view(config_hash, **kw), task_docs]


# ---- the cases


STRING_ARGS = [("model", "unknown model"), ("method", "unknown method"), ("eval_set", "unknown eval set"),
               ("metric", "unknown front metric"), ("budget", "budget must be a number")]


@pytest.mark.parametrize("markup", MARKUP)
def test_markup_in_every_string_argument_comes_back_escaped(app, markup):
    for arg, expect in STRING_ARGS:
        refused(call(app, "front", front(**{arg: markup})), expect, "&lt;")
    h = "0123456789abcdef"
    refused(call(app, "select", view(markup)), "not a configuration hash", "&lt;")
    refused(call(app, "select_best", view(eval_set=markup)), "unknown eval set")
    refused(call(app, "sample", [h, MODEL, [markup], "To be", 4]), "unknown method")
    refused(call(app, "export", [markup, MODEL, "shakespeare", 256, 8]), "not a configuration hash")
    refused(call(app, "quick_eval", quick(h, metric=markup)), "unknown front metric")


NUMBERS = [  # (raw JSON of the argument, what the message says)
    ("NaN", "windows must be a whole number"), ("Infinity", "windows must be a whole number"),
    ("-Infinity", "windows must be a whole number"), ("8.5", "windows must be a whole number"),
    ("-1", "windows must be in [1, 32]"), ("33", "windows must be in [1, 32]"), ("1e308", "windows must be in [1, 32]"),
    ("true", "whole number"), ("[8]", "whole number"), ('{"n": 8}', "whole number"), ('"8.5"', "whole number"),
    ("null", "whole number"),
]


@pytest.mark.parametrize("value, expect", NUMBERS, ids=[n for n, _ in NUMBERS])
def test_bad_numbers_are_one_clear_sentence(app, value, expect):
    raw = json.dumps({"data": front(windows="@")}).replace('"@"', value)
    refused(call(app, "front", raw=raw), expect)
    quick_raw = json.dumps({"data": quick("0123456789abcdef", windows="@")}).replace('"@"', value)
    refused(call(app, "quick_eval", raw=quick_raw), expect)


def test_bad_budgets_tokens_and_prompts(app):
    h = "0123456789abcdef"
    for value, expect in (("NaN", "outside the feasible range"), ("Infinity", "outside the feasible range"),
                          ('"<b>3</b>"', "budget must be a number"), ("[4]", "budget must be a number"),
                          ("true", "outside the feasible range")):  # coalora.quant.config.check_budget's words
        raw = json.dumps({"data": front(budget="@")}).replace('"@"', value)
        refused(call(app, "front", raw=raw), "budget", expect)
    for tokens, expect in (("NaN", "whole number"), ("65", "[1, 64]"), ("0", "[1, 64]"), ("2.5", "whole number")):
        raw = json.dumps({"data": [h, MODEL, ["coalora"], "To be", "@"]}).replace('"@"', tokens)
        refused(call(app, "sample", raw=raw), "max new tokens", expect)
    lone = json.dumps({"data": [h, MODEL, ["coalora"], "@", 4]}).replace('"@"', '"To be \\ud800"')
    refused(call(app, "sample", raw=lone), "lone surrogate")
    refused(call(app, "sample", [h, MODEL, ["coalora"], "x" * 2001, 4]), "2000")
    refused(call(app, "sample", [h, MODEL, ["coalora"], ["To be"], 4]), "prompt must be text")
    refused(call(app, "sample", [h, MODEL, ["qlora"], "To be", 4]), "protocol comparison")  # was AttributeError
    for docs, expect in (("-1", "[0, 400]"), ("401", "[0, 400]"), ("NaN", "whole number"), ("true", "whole number"),
                         ('"<b>8</b>"', "whole number"), ("[8]", "whole number")):
        raw = json.dumps({"data": quick(h, "@")}).replace('"@"', docs)
        refused(call(app, "quick_eval", raw=raw), "lm-eval task documents", expect)
    refused(call(app, "quick_eval", quick(h, metric="task:hellaswag/acc")), "unknown front metric")


def test_wrong_types_names_and_shapes(app):
    refused(call(app, "front", front(method=["coalora"])), "unknown method", "a list, not text")
    refused(call(app, "front", front(model={"name": MODEL})), "unknown model")
    refused(call(app, "front", front(seqlen=100)), "tokens per window must be one of 128, 256, 512")
    refused(call(app, "front", front(method="qlora")), "coalora compare")
    for name in ("tiny-llama", "../../etc/passwd", "/tmp", "", "SMOLLM2-135M"):
        refused(call(app, "front", front(model=name)), "unknown model")
    refused(call(app, "select_best", view(model="tiny-llama")), "unknown model")  # a test model is never offered
    hub = refused(call(app, "front", front(model="Qwen/Qwen2.5-0.5B")), "not available offline")
    assert "Qwen" in hub  # an offered hub model: one sentence on why it cannot load here
    refused(call(app, "select_best", view(methods=["coalora"] * 9)), "up to 8")
    refused(call(app, "select_best", view(methods=[[[[[[[[[["coalora"]]]]]]]]]])), "nest deeper")
    for h in ("'; DROP TABLE configs; --", "ffffffffffffffff", "0" * 15, ["0123456789abcdef"]):
        refused(call(app, "select", view(h)), "configuration")
    file_ref = {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}
    refused(call(app, "front", front(model=file_ref)), "files are not taken")
    refused(call(app, "select", view(file_ref)), "files are not taken")


def test_argument_counts_are_checked(app):
    refused(call(app, "front", [*front(), "extra"]), "/front takes 7 arguments, got 8")
    refused(call(app, "front", front()[:3]), "/front takes 7 arguments, got 3")
    refused(call(app, "select_best", [*view(), "x", "y"]), "/select_best takes 7 arguments, got 9")
    refused(call(app, "export", []), "/export takes 5 arguments, got 0")


def test_huge_strings_are_quoted_short_or_refused_whole(app):
    for arg, expect in STRING_ARGS:
        message = refused(call(app, "front", front(**{arg: "A" * 60_000})), expect)
        assert message.count("A") <= 60
    status, text = _announce(app, "front", 1_000_000)
    assert status == 413 and "64 KiB" in text
    status, text = _announce(app, "front", None)
    assert status == 411 and "Content-Length" in text
    status, text = call(app, "front", raw='{"data": "' + "A" * 1000 + '"}')
    assert status == 422 and "not what this endpoint takes" in text and "AAAA" not in text


def test_share_links_ignore_spoofed_headers(app):
    spoof = {"Referer": "http://evil.example/phish?model=x", "X-Forwarded-Host": "evil.example",
             "X-Forwarded-Proto": "http", "Origin": "http://evil.example"}
    kind, out = call(app, "select_best", view(budget=3.0), headers=spoof)
    assert kind == "complete", out
    link = out[6]
    assert link.startswith(f"https://{SPACE_HOST}/?model={MODEL}&budget=3.00&") and "&config=" in link, link
    assert "evil" not in link
    kind, out = call(app, "select_best", view(budget=3.0), headers={"Host": "evil.example"})
    assert kind == "complete" and out[6].startswith(f"https://{SPACE_HOST}/")


def _on_load(app: App, query: dict) -> list[str]:
    """The page-load event with the share link's ``query`` (as the page sends it): its warnings."""
    cfg = json.loads(_http(f"{app.url}config")[1])
    dep = next(d for d in cfg["dependencies"] if any(t[1] == "load" for t in d["targets"]) and len(d["outputs"]) == 7)
    session = "hostile0"
    body = json.dumps({"data": [None], "fn_index": dep["id"], "session_hash": session, "event_data": None,
                       "trigger_id": None}).encode()
    status, _ = _http(f"{app.url}gradio_api/queue/join?{urllib.parse.urlencode(query)}", body,
                      {"Content-Type": "application/json"})
    assert status == 200
    logs = []
    with urllib.request.urlopen(f"{app.url}gradio_api/queue/data?session_hash={session}", timeout=60) as r:
        for line in r:
            text = line.decode()
            clean(text)
            if text.startswith("data: "):
                msg = json.loads(text[6:])
                if msg.get("msg") == "log":
                    logs.append(msg["log"])
                if msg.get("msg") == "process_completed":
                    assert msg["success"] and msg["output"]["data"][:3] == [MODEL, "shakespeare", 4.0]
                    break
    return logs


def test_share_link_query_parameters_are_warned_about_escaped(app):
    query = {"model": MARKUP[0], "eval_set": MARKUP[1], "budget": MARKUP[2], "config": MARKUP[3] * 100}
    logs = _on_load(app, query)
    assert len(logs) == 4
    for message in logs:
        assert "<" not in message and ">" not in message and "&lt;" in message and len(message) < 400


def test_files_outside_the_apps_own_directories_are_refused(app):
    secret = app.tmp / "secret.txt"
    secret.write_text("not for the web")
    paths = ["/etc/passwd", "/proc/self/environ", str(secret), str(app.store), str(ROOT / "app.py"),
             str(ROOT / "data" / "seed"), "../../../../etc/passwd", "..%2f..%2f..%2fetc%2fpasswd",
             "%2Fetc%2Fpasswd", "//etc/passwd", f"{app.scratch}/gradio/../../secret.txt", str(app.scratch),
             "file:///etc/passwd", "http://127.0.0.1:1/x"]
    for p in paths:
        status, text = _http(f"{app.url}gradio_api/file={p}")
        assert status in (403, 404), f"{p}: {status} {text[:100]}"
        assert "not for the web" not in text and "root:" not in text
    status, text = _http(f"{app.url}gradio_api/upload", b"--x\r\n\r\n--x--\r\n",
                         {"Content-Type": "multipart/form-data; boundary=x"})
    assert status == 403 and "no file uploads" in text


def test_gradio_client_gets_the_same_answers(app):
    from gradio_client import Client

    c = Client(app.url, verbose=False, download_files=False)
    try:
        for args, expect in ((front(model=MARKUP[0]), "unknown model"), (front(windows=8.5), "whole number"),
                             (front(model="tiny-llama"), "unknown model"), (front(method=["coalora"]), "a list")):
            with pytest.raises(Exception) as e:
                c.predict(*args, api_name="/front")
            message = str(e.value)
            assert expect in message and "<" not in message and "internal error" not in message, message
        assert c.predict(*front(windows=8.0), api_name="/front")["query"]["windows"] == 8  # 8.0 is 8
    finally:
        c.close()


def test_app_is_alive_the_store_unchanged_and_the_log_clean(app):
    kind, out = call(app, "front", front())
    assert kind == "complete" and out[0]["query"]["model"] == MODEL
    assert app.proc.poll() is None
    log = app.log.read_text()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]


def test_another_process_never_serves_this_ones_files(app, tmp_path):
    """Run last: stops the app. B (the tiny model) starts while A runs: B refuses A's export and the
    files earlier versions left in the temp dir; a dead process's scratch dir is swept at B's start;
    each process's scratch dir is gone once it has stopped."""
    args = [call(app, "select_best", view(budget=2.5))[1][0], MODEL, "shakespeare", 128, 1]
    kind, out = call(app, "export", args)
    assert kind == "complete" and "written in" in out[1], out
    a_file = out[0][0]["path"]
    kind, again = call(app, "export", args)  # the same bundle content: the same file, not another 60 MB
    assert kind == "complete" and "already exported" in again[1] and again[0][0]["path"] == a_file
    assert Path(a_file).resolve().is_relative_to(app.scratch.resolve()) and a_file.endswith(".zip")
    assert Path(a_file).parent.parent.name == "coalora-exports"  # served in place: Gradio made no second copy
    assert _http(f"{app.url}gradio_api/file={a_file}", method="HEAD")[0] == 200

    dead = subprocess.Popen(["true"])
    dead.wait()
    planted = [app.tmp / "gradio" / ("a" * 64) / "old.zip", app.tmp / "coalora-exports" / ("0" * 32) / "old.zip",
               app.tmp / f"coalora-app-{dead.pid}-zzz" / "gradio" / ("b" * 64) / "old.zip"]
    for p in planted:
        p.parent.mkdir(parents=True)
        p.write_bytes(b"PK\x05\x06" + b"\0" * 18)  # an empty zip an earlier process left
    b = App(app.tmp, "tiny-llama", app.tmp / "b.duckdb", "b")
    try:
        assert not planted[2].exists()  # the dead process's scratch dir was swept
        assert app.scratch.is_dir()  # a live one's is not
        for p in [a_file, *map(str, planted)]:
            assert _http(f"{b.url}gradio_api/file={p}", method="HEAD")[0] in (403, 404), p
        kind, out = call(b, "export", [call(b, "select_best", view(model="tiny-llama", methods=["none"]))[1][0],
                                       "tiny-llama", "shakespeare", 128, 1])
        assert kind == "complete" and Path(out[0][0]["path"]).resolve().is_relative_to(b.scratch.resolve())
        assert _http(f"{b.url}gradio_api/file={out[0][0]['path']}", method="HEAD")[0] == 200
        assert _http(f"{app.url}gradio_api/file={out[0][0]['path']}", method="HEAD")[0] == 403  # and back
    finally:
        b.stop()
    assert not b.scratch.exists()
    app.stop()
    assert not app.scratch.exists()  # SIGTERM exits through the cleanup
    after = _store_snapshot(app.store)
    assert after["evaluations"] == app.before["evaluations"] and after["configs"] == app.before["configs"]
    assert after["models"] <= app.before["models"] | {MODEL} and "tiny-llama" not in after["models"]
