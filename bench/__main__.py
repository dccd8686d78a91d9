"""Run every ``bench/bench_*.py`` (each prints one JSON object) and write ``bench/results/latest.json``.

Usage: ``python -m bench [NAME ...]`` (names without the ``bench_`` prefix, e.g. ``forward quant``).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent


def main(argv: list[str]) -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    if argv:
        wanted = {f"bench_{a}.py" for a in argv}
        scripts = [s for s in scripts if s.name in wanted]
    results: dict[str, object] = {}
    failed = []
    for script in scripts:
        name = script.stem.removeprefix("bench_")
        print(f"== {name}", file=sys.stderr, flush=True)
        t0 = time.time()
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=HERE.parent)
        try:
            results[name] = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
        except (IndexError, ValueError):
            results[name] = None
        if results[name] is None:
            failed.append(name)
            print(proc.stderr[-2000:], file=sys.stderr)
        print(f"   {time.time() - t0:.1f} s", file=sys.stderr)
    report = {
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "results": results,
    }
    out = HERE / "results" / "latest.json"
    out.parent.mkdir(exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out)
    print(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
