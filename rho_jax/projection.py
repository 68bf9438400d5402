"""Weight projections `y = einsum(spec, x, w)` with a backward whose products XLA lays out without copies.

Autodiff transposes `einsum("btd,df->btf", x, w)` into dot(dy, x) followed by a transpose for dW. XLA:CPU folds
that transpose into the elementwise fusion that produces dy, which then writes dy transposed ([N, F] -> [F, N],
strided), and into a transposed-operand dot: together the MLP's forward + backward ran 1.3x slower than with
the two products asked for directly (BENCHMARKS.md, "Issue 21, second pass"). `project`'s backward
is exactly those products,

    dx = einsum(out,w->x, dy, w)      dw = einsum(x,out->w, x, dy)

the same sums in another order, so gradients agree with autodiff's up to f32 rounding (about 1e-6 relative).

Remat: the output is named PROJECTION (`jax.ad_checkpoint.checkpoint_name`) and model.REMAT_POLICIES' dot
policies save that name as they save any other weight matmul; `optimize_remat` keeps remat from re-running the
forward for residuals (they are the inputs). Mixed dtypes (a bf16 `x` with an f32 `preferred_element_type`,
as the LM head under bf16 compute) keep autodiff's rule, which owns the dtype of each cotangent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

PROJECTION = "projection"  # the checkpoint name of every projection's output


def _specs(spec: str) -> tuple[str, str, str]:
    inputs, out = spec.split("->")
    x, w = inputs.split(",")
    return x, w, out


def _einsum(spec: str, x, w):
    return jnp.einsum(spec, x, w)


def _project_fwd(spec: str, x, w):
    return _einsum(spec, x, w), (x, w)


def _project_bwd(spec: str, res, dy):
    x, w = res
    xs, ws, out = _specs(spec)
    return jnp.einsum(f"{out},{ws}->{xs}", dy, w), jnp.einsum(f"{xs},{out}->{ws}", x, dy)


_project = jax.custom_vjp(_einsum, nondiff_argnums=(0,))
_project.defvjp(_project_fwd, _project_bwd, optimize_remat=True)


def project(spec: str, x, w, preferred_element_type=None) -> jax.Array:
    """einsum(spec, x, w) for a weight `w` (e.g. "btd,df->btf"): x [..., in dims], w [in dims..., out dims...].

    The output has x's dtype, or `preferred_element_type` (then autodiff's backward is used; see above).
    """
    out_dtype = jnp.dtype(preferred_element_type or x.dtype)
    if x.dtype == w.dtype == out_dtype:
        y = _project(spec, x, w)
    else:
        y = jnp.einsum(spec, x, w, preferred_element_type=preferred_element_type)
    return checkpoint_name(y, PROJECTION)
