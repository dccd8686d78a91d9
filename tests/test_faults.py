"""Faults with real processes: a writer killed with SIGKILL in the middle of its work.

(a) the results store (a loop of ``add_evaluation``), (b) training checkpoints (a loop of
``save_checkpoint`` of a ~24 MB tensor dict), (c) bundle exports (``export_bundle`` of tiny-llama
shapes). After each kill nothing is corrupt (the store opens and every row is complete; the
checkpoint loads and is the last one saved or the one before; no partial bundle sits at the final
path), and the next start recovers by itself, removing what the killed writer left behind.

Each fault is injected several times at a random moment, plus once at a chosen worst moment (inside
a transaction, between writing and renaming a file, half-way through building a bundle).
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT), GRADIO_ANALYTICS_ENABLED="False")
RNG = random.Random(20240607)
FAULTS: dict[str, int] = {}
"""Kills injected per kind (the report counts them)."""
OUTCOMES: dict[str, int] = {}
"""What the kills hit (e.g. a save in progress: a temporary was left)."""


class Child:
    """A ``python -c`` child whose stdout lines are read (unbuffered, with a deadline) as they come."""

    def __init__(self, script: str, *args: str, cwd: Path = ROOT) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, cwd=cwd, bufsize=0)
        self.lines: list[str] = []
        self._seen = 0  # lines already matched by wait_for
        self._partial = b""

    def _read(self, timeout: float) -> bool:
        """Read what is there into ``lines``; False at end of output."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return True
        chunk = os.read(self.proc.stdout.fileno(), 65536)
        if not chunk:
            return False
        *done, self._partial = (self._partial + chunk).split(b"\n")
        self.lines += [line.decode().strip() for line in done]
        return True

    def wait_for(self, prefix: str, timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for i in range(self._seen, len(self.lines)):
                if self.lines[i].startswith(prefix):
                    self._seen = i + 1
                    return self.lines[i]
            self._seen = len(self.lines)
            if time.monotonic() > deadline or not self._read(0.5):
                break
        self.proc.kill()
        raise AssertionError(f"child never printed {prefix!r}; stdout {self.lines[-5:]}, "
                             f"stderr {self.proc.stderr.read()[-2000:].decode(errors='replace')}")

    def kill(self, test: str) -> None:
        assert self.proc.poll() is None, f"child exited early: {self.proc.stderr.read()[-2000:]!r}"
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL
        FAULTS[test] = FAULTS.get(test, 0) + 1
        while self._read(0.1):  # what it managed to report before dying
            pass
        self.proc.stdout.close()
        self.proc.stderr.close()

    def last(self, prefix: str) -> int | None:
        """The number on the last ``prefix N`` line (None if there was none)."""
        nums = [int(line.split()[1]) for line in self.lines if line.startswith(prefix + " ")]
        return nums[-1] if nums else None


def _temps(path: Path) -> list[Path]:
    """Whatever a writer of ``path`` left beside it: hidden siblings ``.<name>.*``."""
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def _pid_of(temp: Path, path: Path) -> int | None:
    """The writer's pid in a temporary's name (``.<name>.<pid>.<random>[.tmp]``), if it has one."""
    m = re.match(rf"^\.{re.escape(path.name)}\.(\d+)\.", temp.name)
    return int(m.group(1)) if m else None


def _note(what: str) -> None:
    OUTCOMES[what] = OUTCOMES.get(what, 0) + 1


# --------------------------------------------------------------------------------------------
# (a) the results store

_STORE_WRITER = """
    import sys
    from coalora.quant.config import ALL_CONFIGS, ModelQuantConfig
    from coalora.models import Target
    from coalora.store import Evaluation, Store

    path, checkpoint_often = sys.argv[1], sys.argv[2] == "1"
    targets = [Target(f"model.layers.{b}.mlp.{m}", b, m, (64, 64)) for b in range(2) for m in ("up_proj", "down_proj")]
    s = Store(path, seed_dir=None)
    if checkpoint_often:  # DuckDB folds the log into the file every few writes: kills land in checkpoints too
        s._cursor().execute("PRAGMA wal_autocheckpoint = '4KB'")
    i = s.count("evaluations")
    print("ready", i, flush=True)
    while True:
        cfg = ModelQuantConfig.from_ids("tiny-llama", targets, [(i * 7 + k) % len(ALL_CONFIGS) for k in range(4)])
        ev = Evaluation("tiny-llama", cfg.hash, "none", "", "fault:eval@0", 64, 2, i + 1, ppl=1.0 + i, nll=float(i),
                        avg_bits=cfg.avg_bits, seconds=0.25)
        assert s.add_evaluation(ev, config=cfg)
        i += 1
        print("added", i, flush=True)
"""


def _check_store(path: Path, at_least: int) -> int:
    """The store opens read-write, every row is complete and consistent; returns the row count."""
    from coalora.quant.config import ALL_CONFIGS
    from coalora.store import Store

    with Store(path, seed_dir=None, fallback=False) as s:
        assert s.warning is None and not s.read_only
        evs = s.evaluations()
        n = len(evs)
        assert n >= at_least
        assert s.count("configs") == n  # each evaluation was written with its configuration, in one transaction
        for ev in evs:
            i = ev.tokens - 1
            assert (ev.ppl, ev.nll, ev.seconds, ev.seqlen, ev.windows) == (1.0 + i, float(i), 0.25, 64, 2)
            assert s.config_ids(ev.config_hash) == ("tiny-llama", [(i * 7 + k) % len(ALL_CONFIGS) for k in range(4)])
        assert sorted(ev.tokens for ev in evs) == list(range(1, n + 1))  # no gap: a prefix of the writes
    return n


def test_store_killed_while_writing(tmp_path):
    """Five writers in turn on one store, each killed at a random moment; each start goes on from the last."""
    path = tmp_path / "results.duckdb"
    committed = 0
    for k in range(5):
        child = Child(_STORE_WRITER, path, k % 2)
        assert int(child.wait_for("ready").split()[1]) == committed  # the next start sees every committed row
        time.sleep(RNG.uniform(0.05, 0.4))
        child.kill("store")
        printed = child.last("added") or committed
        n = _check_store(path, printed)
        assert n <= printed + 1  # at most the one being committed when the kill came
        _note(f"store: kill after {n - committed} writes")
        committed = n
    assert committed > 5  # the writers did write


def test_store_killed_inside_a_transaction(tmp_path):
    path = tmp_path / "results.duckdb"
    child = Child("""
        import sys, time
        from coalora.store import Evaluation, Store

        s = Store(sys.argv[1], seed_dir=None)
        s.add_evaluation(Evaluation("m", "kept", "none", "", "e", 8, 1, 8, 1.0, 0.0, 3.0))
        with s._transaction() as cur:
            cur.execute("INSERT INTO configs (config_hash, model, avg_bits, ids) VALUES ('lost', 'm', 3.0, '[]')")
            cur.execute("INSERT INTO evaluations (model, config_hash, adapter_id, method, eval_set, seqlen, windows,"
                        " tokens, ppl, nll, avg_bits) VALUES ('m', 'lost', '', 'none', 'e', 8, 1, 8, 2.0, 0.0, 3.0)")
            print("inside", flush=True)
            time.sleep(60)
    """, path)
    child.wait_for("inside")
    child.kill("store")
    from coalora.store import Store

    with Store(path, seed_dir=None) as s:
        assert [e.config_hash for e in s.evaluations()] == ["kept"] and s.count("configs") == 0
        assert s.add_evaluation(s.evaluations()[0].__class__("m", "new", "none", "", "e", 8, 1, 8, 1.0, 0.0, 3.0))


def test_store_killed_while_being_created_and_seeded(tmp_path):
    """A kill during the first open (schema + seeding from data/seed): the next open finishes the job."""
    from coalora.store import SEED_DIR, TABLES, Store

    if not (SEED_DIR / "evaluations.parquet").is_file():
        pytest.skip("no data/seed in this checkout")
    with Store(tmp_path / "reference.duckdb") as ref:
        want = {t: ref.count(t) for t in TABLES}
    for k in range(3):
        path = tmp_path / f"r{k}.duckdb"
        child = Child("""
            import sys
            import duckdb  # loaded before the signal, so the kill lands in the creation itself
            print("go", flush=True)
            from coalora.store import Store
            Store(sys.argv[1]).close()
            print("done", flush=True)
            import time; time.sleep(60)
        """, path)
        child.wait_for("go")
        time.sleep(RNG.uniform(0.0, 0.15))
        child.kill("store")
        with Store(path) as s:
            assert {t: s.count(t) for t in TABLES} == want


# --------------------------------------------------------------------------------------------
# (b) training checkpoints

_CHECKPOINT_WRITER = """
    import sys
    import torch
    from coalora.checkpoint import load_checkpoint, save_checkpoint

    path = sys.argv[1]
    step = 0
    try:
        tensors, meta = load_checkpoint(path)  # resume (and clean what a killed save left)
        step = meta["step"]
    except Exception as e:
        if "no checkpoint" not in str(e):
            raise
    print("ready", step, flush=True)
    while True:
        step += 1
        tensors = {"a": torch.full((4_000_000,), float(step)), "b": torch.full((2_000_000,), -float(step))}
        print("saving", step, flush=True)
        save_checkpoint(path, tensors, {"step": step, "note": "x" * 1000})
        print("saved", step, flush=True)
"""


def _check_checkpoint(path: Path, last_saved: int) -> int:
    from coalora.checkpoint import load_checkpoint

    tensors, meta = load_checkpoint(path)
    step = meta["step"]
    assert last_saved <= step <= last_saved + 1  # the last one reported, or the one renamed just before the kill
    assert bool((tensors["a"] == step).all()) and bool((tensors["b"] == -step).all())
    assert tensors["a"].numel() == 4_000_000 and meta["note"] == "x" * 1000
    return step


def test_checkpoint_killed_while_saving(tmp_path):
    """Four trainers in turn on one checkpoint, each killed at a random moment during its save loop."""
    path = tmp_path / "checkpoint.safetensors"
    step = 0
    for _ in range(5):
        child = Child(_CHECKPOINT_WRITER, path)
        assert int(child.wait_for("ready").split()[1]) == step  # resumed from the last good checkpoint
        assert _temps(path) == []  # ... after removing the killed save's temporary
        for _ in range(RNG.randrange(1, 4)):  # a random save, then a random moment in or after it
            child.wait_for("saving")
        time.sleep(RNG.uniform(0.0, 0.04))
        child.kill("checkpoint")
        _note("checkpoint: kill during a save (temporary left)" if _temps(path) else "checkpoint: kill between saves")
        assert all(_pid_of(t, path) == child.proc.pid for t in _temps(path))
        saved = child.last("saved")
        step = _check_checkpoint(path, step if saved is None else saved)
    # the next start (a load) removes what the last kill left
    _check_checkpoint(path, step)
    assert _temps(path) == []


def test_checkpoint_killed_between_writing_and_renaming(tmp_path):
    """The worst moment: the new file half-written under its temporary name; the old one must survive."""
    path = tmp_path / "checkpoint.safetensors"
    child = Child("""
        import os, sys, time
        import safetensors.torch as st
        import torch
        from coalora.checkpoint import save_checkpoint

        path = sys.argv[1]
        save_checkpoint(path, {"a": torch.full((1000,), 1.0)}, {"step": 1})
        real = st.save_file

        def half_then_hang(tensors, filename, metadata=None):
            real(tensors, filename, metadata=metadata)
            size = os.path.getsize(filename)
            with open(filename, "r+b") as f:
                f.truncate(size // 2)
            print("half", flush=True)
            time.sleep(60)

        st.save_file = half_then_hang
        save_checkpoint(path, {"a": torch.full((1000,), 2.0)}, {"step": 2})
    """, path)
    child.wait_for("half")
    assert len(_temps(path)) == 1
    child.kill("checkpoint")
    from coalora.checkpoint import load_checkpoint, save_checkpoint

    tensors, meta = load_checkpoint(path)
    assert meta["step"] == 1 and bool((tensors["a"] == 1.0).all())
    assert _temps(path) == []  # the load (the next start) removed the dead writer's half file
    import torch

    save_checkpoint(path, {"a": torch.full((1000,), 3.0)}, {"step": 3})
    assert load_checkpoint(path)[1]["step"] == 3


def test_a_live_writers_temporary_is_left_alone(tmp_path):
    """Cleaning up never touches the temporary of a writer that is still running."""
    from coalora.files import clean_stale_temps

    path = tmp_path / "checkpoint.safetensors"
    live = tmp_path / f".checkpoint.safetensors.{os.getpid()}.abcd1234.tmp"
    live.write_text("being written")
    child = Child("import os; print('pid', os.getpid(), flush=True)")
    dead_pid = int(child.wait_for("pid").split()[1])
    child.proc.wait(timeout=30)
    dead = tmp_path / f".checkpoint.safetensors.{dead_pid}.abcd1234.tmp"
    dead.write_text("left by a killed writer")
    other = tmp_path / f".checkpoint.safetensors.bak.{dead_pid}.abcd1234.tmp"  # another file's temporary
    other.write_text("x")
    assert clean_stale_temps(path) == [dead]
    assert live.exists() and other.exists() and not dead.exists()


# --------------------------------------------------------------------------------------------
# (c) bundle exports

_EXPORTER = """
    import json, sys, time
    import torch
    from coalora.export.bundle import export_bundle
    from coalora.quant.config import ALL_CONFIGS, ModelQuantConfig
    from coalora.models import Target

    spec = json.loads(sys.argv[1])
    targets = [Target(n, b, m, tuple(s)) for n, b, m, s in spec["targets"]]
    g = torch.Generator().manual_seed(0)
    originals = {t.name: torch.randn(t.shape, generator=g) for t in targets}
    cfg = ModelQuantConfig.from_ids("tiny-llama", targets, [(5 * i) % len(ALL_CONFIGS) for i in range(len(targets))])
    lora = adapter = None
    if spec["lora"]:
        lora = {t.name: (torch.randn(4, t.shape[1], generator=g) * 0.01, torch.zeros(t.shape[0], 4)) for t in targets}
        adapter = {"id": "x", "method": "coalora", "rank": 4, "alpha": 8.0}
    if spec["hang_in_build"]:  # stop half-way: weights and adapter written, README and metadata not yet
        import coalora.export.bundle as bundle

        real = bundle._readme

        def hang(meta):
            print("building", flush=True)
            time.sleep(60)
            return real(meta)

        bundle._readme = hang
    print("ready", flush=True)
    i = 0
    while True:
        export_bundle("tiny-llama", cfg, originals, spec["out"], weights_hash="w" * 16, lora=lora, adapter=adapter,
                      make_zip=spec["zip"], force=True)
        i += 1
        print("exported", i, flush=True)
"""


@pytest.fixture(scope="module")
def tiny_targets():
    from coalora.models import model_targets

    return [[t.name, t.block, t.module_type, list(t.shape)] for t in model_targets("tiny-llama")]


def _export_spec(targets, out: Path, *, zip_: bool = False, lora: bool = False, hang: bool = False) -> str:
    return json.dumps({"targets": targets, "out": str(out), "zip": zip_, "lora": lora, "hang_in_build": hang})


def _final(out: Path, zip_: bool) -> Path:
    return out.with_name(out.name + ".zip") if zip_ else out


def _check_bundle(final: Path) -> bool:
    """The final path holds a complete bundle, or nothing; returns whether it exists."""
    from coalora.export.bundle import read_bundle_meta

    if not final.exists():
        return False
    p, meta = read_bundle_meta(final)  # every file present with its recorded hash
    assert meta["model"] == "tiny-llama"
    if final.suffix == ".zip":
        import shutil

        shutil.rmtree(p)
    return True


@pytest.mark.parametrize("zip_", [False, True], ids=["dir", "zip"])
def test_export_killed_at_random_moments(tmp_path, tiny_targets, zip_):
    """Exporters in turn to one path, each killed at a random moment (during the first or a later
    --force export); each start clears the previous one's temporaries."""
    out = tmp_path / "bundle"
    final = _final(out, zip_)
    pids: list[int] = []
    for _ in range(3 if zip_ else 4):
        child = Child(_EXPORTER, _export_spec(tiny_targets, out, zip_=zip_))
        child.wait_for("ready")
        time.sleep(RNG.uniform(0.0, 0.3) if len(pids) % 2 == 0 else RNG.uniform(0.3, 2.0))  # in the first export or later
        child.kill("bundle")
        pids.append(child.proc.pid)
        exists = _check_bundle(final)
        _note(f"bundle: kill {'after' if exists else 'before'} the first export completed"
              + (", temporaries left" if _temps(final) else ""))
        # only the process killed just now may have left temporaries: the start of each export
        # removed those of the ones before
        assert {_pid_of(t, final) for t in _temps(final)} <= {pids[-1]}
        # nothing else beside the final path
        assert {p.name for p in tmp_path.iterdir()} <= {final.name} | {t.name for t in _temps(final)}
    # the next start: a complete export, and nothing left behind
    from coalora.export.bundle import export_bundle
    from coalora.models import Target
    from coalora.quant.config import ALL_CONFIGS, ModelQuantConfig

    targets = [Target(n, b, m, tuple(s)) for n, b, m, s in tiny_targets]
    import torch

    cfg = ModelQuantConfig.from_ids("tiny-llama", targets, [(5 * i) % len(ALL_CONFIGS) for i in range(len(targets))])
    export_bundle("tiny-llama", cfg, {t.name: torch.randn(t.shape) for t in targets}, out, weights_hash="w" * 16,
                  make_zip=zip_, force=True)
    assert _check_bundle(final) and _temps(final) == []
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


def test_export_killed_half_way_through_building(tmp_path, tiny_targets):
    """The worst moment for a first export: weights and adapter written into the temporary directory."""
    out = tmp_path / "bundle"
    child = Child(_EXPORTER, _export_spec(tiny_targets, out, lora=True, hang=True))
    child.wait_for("building")
    (tmp,) = _temps(out)
    assert (tmp / "quantized_weights.safetensors").is_file() and (tmp / "adapter").is_dir()
    child.kill("bundle")
    assert not out.exists()  # no partial bundle at the final path
    from coalora.errors import CoaloraError
    from coalora.export.bundle import read_bundle_meta

    with pytest.raises(CoaloraError, match="no bundle at"):
        read_bundle_meta(out)
    # the next export to the same path removes the dead export's directory
    from coalora.files import atomic_dir

    with atomic_dir(out) as d:
        (d / "marker").write_text("x")
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_fault_count():
    """Runs last in this module: the kills injected (for the report)."""
    total = sum(FAULTS.values())
    print(f"\nfaults injected: {total} {dict(sorted(FAULTS.items()))}")
    for what, n in sorted(OUTCOMES.items()):
        print(f"  {n} x {what}")
    if len(FAULTS) == 3:  # the whole module ran
        assert total >= 20
