"""`rho-jax convert`: HF directory or GGUF -> Orbax model dir, and Orbax model dir -> HF directory."""

from __future__ import annotations

import os


def convert(src: str, dst: str, to: str = "orbax") -> None:
    """Validates the whole source before writing anything; `dst` must not already hold files."""
    from rho_jax import checkpoint as ckpt

    if os.path.exists(dst) and os.listdir(dst):
        raise FileExistsError(f"output directory {dst} is not empty; choose a new one")
    if to == "orbax":
        from rho_jax.interop import load_pretrained

        cfg, params = load_pretrained(src)
        ckpt.save_model(cfg, params, dst)
    elif to == "hf":
        from rho_jax.interop import save_hf

        cfg, params = ckpt.load_model(src)
        save_hf(cfg, params, dst)
    else:
        raise ValueError(f"--to={to!r}; expected 'orbax' or 'hf'")
    print(f"wrote {dst} ({to})")
