"""The data layer: corpora, vocabularies, SeqIO tasks, packing/batching, and the reference-score cache.

This package is the only place allowed to import tensorflow / seqio, and it does so lazily (inside
functions), so `rho_jax.data.pipeline` can be imported on a machine without TensorFlow. Call
`tf_setup()` before any TF work: it hides accelerators from TF so JAX keeps their memory (as T5X does).
"""

from __future__ import annotations


def tf_setup():
    """Imports TensorFlow with GPUs/TPUs hidden from it; returns the `tf` module. Idempotent.

    The import's native oneDNN/CUDA notices are silenced (they come before TF's log level applies)."""
    from rho_jax.quiet import native_stderr_silenced

    with native_stderr_silenced():
        import tensorflow as tf

        for kind in ("GPU", "TPU"):
            try:
                tf.config.set_visible_devices([], kind)
            except RuntimeError:  # devices already initialised (an earlier call did this): nothing to do
                pass
    return tf
