"""The one micro-batching mechanism: its strided layout, the exact round trip, and microbatched(fn, n) equal
to the unbatched computation (on integer-valued data, where float sums are exact in any order)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rho_jax import microbatch

B, L = 8, 5


def _rows(seed=0):
    rs = np.random.RandomState(seed)
    return {"x": rs.randint(-4, 5, (B, L)).astype(np.float32), "i": np.arange(B, dtype=np.int32)}


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_split_is_strided_and_join_restores_row_order(n):
    rows = _rows()
    xs = microbatch.split(rows, n)
    assert xs["x"].shape == (n, B // n, L)
    for i in range(n):  # micro-batch i holds rows i, i+n, ...
        np.testing.assert_array_equal(xs["i"][i], np.arange(i, B, n))
        np.testing.assert_array_equal(xs["x"][i], rows["x"][i::n])
    back = microbatch.join(xs)
    for k in rows:
        np.testing.assert_array_equal(back[k], rows[k])


def test_split_rejects_a_batch_that_does_not_divide():
    with pytest.raises(ValueError, match="multiple of train.grad_accum"):
        microbatch.split(np.zeros((6, 2)), 4)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_microbatched_equals_unbatched(n):
    rows = _rows(1)
    w = jnp.asarray(np.random.RandomState(2).randint(-3, 4, (L,)), jnp.float32)

    def fn(w, r):  # a loss and its gradient (summed), per-row aux (joined)
        loss, g = jax.value_and_grad(lambda w: jnp.sum((r["x"] @ w) ** 2))(w)
        return (loss, g), {"row_sum": jnp.sum(r["x"], axis=1), "i": r["i"]}

    want_total, want_aux = fn(w, rows)
    (loss, g), aux_n = jax.jit(lambda r: microbatched_at(fn, n, w, r))(rows)
    assert jax.tree.leaves(aux_n)[0].shape[0] == n
    np.testing.assert_array_equal(loss, want_total[0])
    np.testing.assert_array_equal(g, want_total[1])
    for k, v in microbatch.join(aux_n).items():
        np.testing.assert_array_equal(v, want_aux[k])


def microbatched_at(fn, n, w, rows):
    return microbatch.microbatched(lambda r: fn(w, r), n)(rows)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_map_rows_and_host_map_rows_keep_each_row_in_place(n):
    rows = _rows(3)
    row_fn = lambda r: (r["x"] * 2 + r["i"][:, None], jnp.sum(r["x"], axis=1))  # noqa: E731
    want = row_fn(rows)
    got = jax.jit(microbatch.map_rows(row_fn, n))(rows)
    mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
    sh = NamedSharding(mesh, P("data"))
    placed = jax.device_put(rows, sh)
    host = microbatch.host_map_rows(jax.jit(row_fn), n, sh)(placed)
    for g, h, w_ in zip(got, host, want):
        np.testing.assert_array_equal(g, w_)
        np.testing.assert_array_equal(h, w_)
