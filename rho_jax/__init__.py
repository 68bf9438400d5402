"""rho-jax: Selective Language Modeling (Rho-1) in JAX/Flax."""

import os

# gs:// through gcsfs in every etils.epath call (ours and Orbax's), not TensorFlow's filesystem: one client,
# the standard credentials and STORAGE_EMULATOR_HOST (rho_jax/storage.py). Before any epath use.
os.environ.setdefault("EPATH_USE_TF", "false")

__version__ = "0.1.0"
