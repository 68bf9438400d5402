"""`rho-jax convert`: HF directory, GGUF or Orbax model dir -> Orbax model dir (with model_meta.json, the
identity a cached-mode run reads instead of hashing the weights), and Orbax model dir -> HF directory."""

from __future__ import annotations

from etils import epath

from rho_jax import checkpoint as ckpt
from rho_jax import interop


def convert(src: str, dst: str, to: str = "orbax") -> None:
    """Validates the whole source before writing anything; `dst` must not already hold files."""
    out = epath.Path(dst)  # local or gs://
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"output directory {dst} is not empty; choose a new one")
    if to == "orbax":
        if ckpt.is_model_dir(src):  # an Orbax dir saved before model_meta.json existed gains it
            cfg, params = ckpt.restore_model_dir(src)
        else:
            cfg, params = interop.load_pretrained(src)
        ckpt.save_model(cfg, params, dst)
    elif to == "hf":
        cfg, params = ckpt.restore_model_dir(src)
        interop.save_hf(cfg, params, dst)
    else:
        raise ValueError(f"--to={to!r}; expected 'orbax' or 'hf'")
    print(f"wrote {dst} ({to})")
