"""Run every ``bench/bench_*.py`` (each prints one JSON object) and write ``bench/results/latest.json``
plus ``bench/results/latest.md`` (the figures next to their references and targets).

Usage: ``python -m bench [NAME ...]`` (names without the ``bench_`` prefix, e.g. ``forward quant``);
named runs update their entries in latest.json and keep the others.
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
    out = HERE / "results" / "latest.json"
    if argv and out.exists():  # a partial run updates its benchmarks and keeps the others' figures
        try:
            results = {**json.loads(out.read_text()).get("results", {}), **results}
        except ValueError:
            pass
    report = {
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "results": results,
    }
    if argv:
        report["rerun"] = sorted(argv)
    from coalora.files import write_json_atomic, write_text_atomic

    write_json_atomic(out, report)
    md = write_text_atomic(out.with_suffix(".md"), markdown(report))
    print(md.read_text())
    return 1 if failed else 0


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _row(figure: str, value, unit: str, reference: str, target: str, met: bool | None) -> str:
    v = "failed" if value is None else (f"{value:.3g} {unit}".strip() if isinstance(value, float) else f"{value} {unit}")
    status = "" if met is None else ("met" if met else "**missed**")
    return f"| {figure} | {v} | {reference} | {target} | {status} |"


def _packed_rows(r: dict) -> list[str]:
    """Rows of ``bench_packed`` (SmolLM2 through the packed runtime) and ``bench_scale`` (a 1B-class run)."""
    rows = []
    p = _get(r, "packed")
    if p:
        dev = p.get("device", "cpu")
        rows.append(_row(f"packed runtime resident memory, SmolLM2 at {p['avg_bits']:.2f} bits ({dev})",
                         p["memory_ratio"], "x", f"packed targets + full-precision params: "
                         f"{(p['packed_target_bytes'] + p['full_precision_bytes']) / 2**20:.0f} MiB (RSS growth "
                         f"{p['configured_rss_mib']:.0f} MiB; tensors {p['tensor_ratio']:.3f}x)", "<= 1.3",
                         p["memory_ratio"] <= 1.3))
        rows.append(_row(f"packed runtime eval tokens/s ({dev})", p["tokens_per_s_ratio"], "x",
                         f"fake-quantized fp32 path ({p['fake_tokens_per_s']:.0f} tokens/s)", "aim >= 0.5",
                         p["tokens_per_s_ratio"] >= 0.5))
        rows.append(_row("packed vs fake-quantized ppl (fp32)", p["packed_vs_fake_rel_diff"], "rel",
                         f"ppl {p['ppl_packed_fp32']:.3f} vs {p['ppl_fake_fp32']:.3f} ({p['windows']} x {p['seqlen']})",
                         "<= 0.005", p["packed_vs_fake_rel_diff"] <= 0.005))
        rows.append(_row("bf16 vs fp32 ppl, same configuration (packed)", p["bf16_vs_fp32_rel_diff"], "rel",
                         f"ppl {p['ppl_packed_bf16']:.3f} (bf16) vs {p['ppl_packed_fp32']:.3f} (fp32)", "reported",
                         None))
    if p and p.get("device", "cpu") == "cpu":
        rows.append("| packed runtime rows on a GPU | not run | no GPU was available to this work: `bench_packed` measures "
                    "the CPU; the CUDA path is covered by the `gpu`-marked tests, which skip here | - |  |")
    s = _get(r, "scale")
    if s:
        ratio = s.get("train_peak_over_bf16_weights")
        rows.append(_row(f"end to end, {s['shape']} shape ({s['num_hidden_layers']} blocks x {s['hidden_size']}): training peak "
                         f"RSS / bf16 weights", ratio, "x", f"bf16 weights {(s['bf16_weight_bytes'] or 0) / 2**30:.2f} GiB; "
                         f"run {s['status']}", "<= 3", None if ratio is None else ratio <= 3))
        ex = next((st for st in s["stages"] if st.get("stage") == "export_load" and "rel_diff" in st), None)
        if ex:
            rows.append(_row(f"end to end ({s['shape']} shape): exported bundle, packed bf16 load vs fake-quantized ppl",
                             ex["rel_diff"], "rel", f"ppl {ex['ppl_packed_bundle']:.1f} vs {ex['ppl_front_fake']:.1f} "
                             f"at {ex['avg_bits']:.2f} bits (random weights)", "<= 0.005", ex["rel_diff"] <= 0.005))
        for st in s["stages"]:
            rows.append(_row(f"end to end ({s['shape']} shape), stage {st['stage']}", st.get("seconds"), "s",
                             f"peak RSS {st['peak_rss_mib']:.0f} MiB" if "peak_rss_mib" in st
                             else st.get("stopped") or f"failed: {st.get('failed')}", "-", None))
    return rows


def markdown(report: dict) -> str:
    """The report's figures as a table: each with its reference (same run), target and verdict."""
    r = report["results"]
    rows = ["| figure | measured | reference (same run) | target | |", "|---|---|---|---|---|"]
    q = _get(r, "quant", "throughput_ratio_vs_bnb")
    rows.append(_row("quantize throughput (nf4-dq, 210 matrices)", q, "x", "bitsandbytes quantize_4bit", ">= 1x",
                     None if q is None else q >= 1))
    a = _get(r, "apply", "switch_ratio")
    rows.append(_row("configuration switch, 10% of matrices changed", a, "x", "full application", "<= 0.15",
                     None if a is None else a <= 0.15))
    g, f = _get(r, "adapter", "generate_ms"), _get(r, "adapter", "generate_ratio_vs_forward")
    rows.append(_row("adapter generation, 210 layers", g, "ms",
                     "one dense 256-token forward" + (f" (ratio {f:.3f})" if f is not None else ""), "< 20 ms",
                     None if g is None else g < 20))
    e = _get(r, "eval", "ratio")
    rows.append(_row("eval tokens/s, quantized + adapter", e, "x", "dense model", ">= 0.95",
                     None if e is None else e >= 0.95))
    m = _get(r, "eval", "peak_rss_apply_eval_mib")
    rows.append(_row("peak memory, apply + eval (SmolLM2)", m, "MiB",
                     f"after loading: {_get(r, 'eval', 'peak_rss_loaded_mib') or 0:.0f} MiB", "-", None))
    t = _get(r, "train", "tokens_per_s_ratio")
    rows.append(_row("CoA-LoRA training tokens/s (K=2)", t, "x", "plain PEFT LoRA", ">= 0.8",
                     None if t is None else t >= 0.8))
    sizes = _get(r, "front", "sizes") or {}
    for n, v in sizes.items():
        rows.append(_row(f"front, {n} stored evaluations (cold / +1 eval)", v["cold_seconds"], "s",
                         f"+1 eval: {v['after_one_new_seconds']:.2f} s ({v['after_one_new_refit']})",
                         "< 3 s at 300" if n == "300" else "-", v["cold_seconds"] < 3 if n == "300" else None))
    if "300" in sizes and "1000" in sizes:
        grow = sizes["1000"]["cold_seconds"] / sizes["300"]["cold_seconds"]
        rows.append(_row("front growth (cold), 300 -> 1000 evaluations", grow, "x",
                         "evaluations grew 3.33x (an exact GP fit is cubic in them)", "-", None))
    cs = _get(r, "front", "candidate_scaling")
    if cs:
        c0, c1 = cs["rows"][0], cs["rows"][-1]
        rows.append(_row(f"front growth in candidates, {c0['candidates']:,} -> {c1['candidates']:,} (cached GP)",
                         cs["seconds_growth"], "x", f"candidates grew {cs['candidates_growth']:.2f}x "
                         f"({c0['cached_seconds']:.2f} -> {c1['cached_seconds']:.2f} s)",
                         f"<= {cs['candidates_growth']:.2f}x (linear)", cs["seconds_growth"] <= cs["candidates_growth"]))
    sc = _get(r, "scaling")
    if sc:
        rows.append(_row("apply time growth over model sizes", sc["apply_growth"], "x",
                         f"target parameters grew {sc['params_growth']:.0f}x", f"<= {sc['params_growth']:.0f}x (linear)",
                         sc["apply_growth"] <= sc["params_growth"]))
        for row in sc["sizes"]:
            rows.append(_row(f"hidden {row['hidden']} ({row['target_mparams']:.1f} M target params): apply / "
                             "switch / generate", row["apply_s"], "s",
                             f"switch {row['switch_10pct_s']:.3f} s, generate {row['generate_ms']:.2f} ms, eval ratio "
                             f"{row['eval_ratio']:.2f}", "-", None))
    rows += _packed_rows(r)
    failed = [k for k, v in r.items() if v is None]
    head = (f"# Benchmarks ({report['created']}, Python {report['machine']['python']}, {report['machine']['cpu']})\n\n"
            "Ratios are against a reference measured in the same run; see bench/README.md.\n\n")
    tail = f"\nFailed benchmarks: {', '.join(failed)}\n" if failed else ""
    return head + "\n".join(rows) + "\n" + tail


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
