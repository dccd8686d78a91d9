"""Export bundle: the selected configuration as a loadable bundle (PEFT adapter, packed weights,
``coalora_config.json``) and its configuration JSON, for download.

The same bundle content (configuration, adapter, recorded results) is written once and reused;
the export directory and Gradio's cache stay under :data:`coalora.limits.EXPORT_CAP_BYTES`
together, least recently used entries deleted first (:mod:`ui.exports`). A bundle records the GP's
prediction for its configuration: for a measured one the prediction made without its measurement
(:mod:`ui.predictions`), not the GP's value at it (which is the measurement).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from coalora import limits
from ui import exports, predictions, state
from ui.convention import Convention, check_eval
from ui.inputs import check_hash
from ui.messages import md_code, user_errors


def cache_dirs() -> list[Path]:
    """What export disk use counts: the export directory and Gradio's cache (where served files go)."""
    return [state.EXPORT_DIR, Path(gr.utils.get_upload_folder())]


def expected_bytes(ex: Any, cfg: Any) -> int:
    """Disk an export of ``cfg`` needs while it is built: the bundle directory and its zip, each
    holding the packed weights and the adapter (fp32 A and B per matrix) with a few KiB of headers
    and metadata per matrix."""
    packed = sum(t.numel for t in cfg.targets) * cfg.avg_bits / 8
    rank = ex.coa.adapter_config.rank if ex.coa is not None else 0
    lora = sum(rank * (t.shape[0] + t.shape[1]) * 4 for t in cfg.targets)
    return int(2 * (packed + lora + 4096 * len(cfg.targets))) + 64 * 2**10


def _writer(ex: Any, cfg: Any, stem: str, cv: Convention, inputs: dict) -> Callable[[Path], list[Path]]:
    """The writer of one export entry: the bundle zip and its configuration JSON into a directory."""

    def write(d: Path) -> list[Path]:
        bundle = ex.export(cfg, d / stem, make_zip=True, seqlen=cv.seqlen, windows=cv.windows, corpus=cv.corpus,
                           inputs=inputs)
        return [Path(bundle), cfg.save(d / f"{stem}.config.json")]

    return write


def bundle_prediction(ex: Any, cfg: Any, cv: Convention, inputs: dict) -> dict | None:
    """The bundle's ``predicted`` entry (module docstring); None without a GP."""
    method = "coalora" if ex.coa is not None else "none"
    pred = inputs.get("predicted")
    if inputs.get("measured") is None:
        return None if pred is None else {**pred, "made": "GP posterior (not measured)"}
    kept = predictions.prior_of(ex, cfg, method, cv, "ppl")
    if kept is None:
        return None
    return {"ppl": kept[0], "lo": kept[1], "hi": kept[2], "band": "+-2 sigma of log ppl", "made": kept[3]}


def _entry(ex: Any, cfg: Any, stem: str, cv: Convention, inputs: dict) -> tuple[exports.Entry, str]:
    """The export entry of this content (reused, or written now under the cap) and how it was obtained."""
    names = (f"{stem}.zip", f"{stem}.config.json")
    key = ex.export_key(cfg, inputs)
    exports.expire(state.EXPORT_DIR, limits.EXPORT_KEEP_S)
    t0 = time.perf_counter()
    entry = exports.find(state.EXPORT_DIR, key, names)
    if entry is not None:
        return entry, "already exported: the same file again"
    need = expected_bytes(ex, cfg)
    exports.check_fits(need, limits.EXPORT_CAP_BYTES)
    exports.evict(cache_dirs(), limits.EXPORT_CAP_BYTES, reserve=need)
    entry = exports.put(state.EXPORT_DIR, key, _writer(ex, cfg, stem, cv, inputs))
    return entry, f"written in {time.perf_counter() - t0:.1f} s"


@user_errors
def export(config_hash: str, model: str, eval_set: str, seqlen: int, windows: int) -> tuple[list[str], str]:
    """Outputs: ([bundle zip, config JSON] for download, note md)."""
    cv = check_eval(eval_set, seqlen, windows)
    h = check_hash(config_hash)
    ex = state.MODELS.get(model)
    cfg = ex.config(h)
    stem = f"coalora-{ex.model_name.replace('/', '--')}-{cfg.hash}"
    inputs = ex.export_inputs(cfg, measure=False, seqlen=cv.seqlen, windows=cv.windows, corpus=cv.corpus)
    inputs["predicted"] = bundle_prediction(ex, cfg, cv, inputs)
    entry, how = _entry(ex, cfg, stem, cv, inputs)
    inside = state.EXPORT_DIR.resolve().is_relative_to(Path(gr.utils.get_upload_folder()).resolve())
    copy = 0 if inside else entry.size()  # Gradio copies a served file that is outside its cache
    exports.evict(cache_dirs(), limits.EXPORT_CAP_BYTES, reserve=copy, keep=[entry.path])
    bundle, cfg_path = entry.files
    size = bundle.stat().st_size / 2**20
    note = (f"Bundle {md_code(bundle.name)} ({size:.1f} MiB: PEFT adapter, packed weights, coalora_config.json), "
            f"{how}. Load it with `coalora load DIR` or `coalora.export.bundle.load_bundle`.")
    return [str(bundle), str(cfg_path)], note
