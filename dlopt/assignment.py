r"""The linear assignment problem, solved in JAX by the Hungarian algorithm
(optax.assignment).

Given an ``n x m`` cost matrix ``C``, find ``min(n, m)`` (row, column) pairs, no row or
column used twice, of least total cost:

    minimize sum_ij C_ij X_ij  s.t.  X_ij in {0, 1},  sum_i X_ij <= 1,  sum_j X_ij <= 1,
    sum_ij X_ij = min(n, m).

Both solvers keep dual potentials ``u`` (rows) and ``v`` (columns) with reduced costs
``C_ij - u_i - v_j >= 0`` and add one row at a time along a shortest augmenting path
(Dijkstra on reduced costs), O(n^2 m) overall. A wide matrix is solved as given, a tall one
transposed. Both return ``(i, j)``: the cost is ``C[i, j].sum()``.

>>> import jax.numpy as jnp
>>> import dlopt
>>> cost = jnp.array([[8, 4, 7], [5, 2, 3], [9, 6, 7], [9, 4, 8]])
>>> i, j = dlopt.assignment.hungarian_algorithm(cost)
>>> print(cost[i, j].sum())
15
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _empty() -> tuple[jax.Array, jax.Array]:
    return jnp.zeros(0, int), jnp.zeros(0, int)


def hungarian_algorithm(cost_matrix: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The Hungarian algorithm in the e-maxx/Scenic form: per row, a search over columns
    updating ``minv`` (the least reduced cost reaching each column) and the potentials by the
    smallest ``minv`` among unused columns, then a walk back along ``path``. A simpler jaxpr
    than `base_hungarian_algorithm` and usually faster.

    References:
        Dehghani et al., `Scenic: A JAX Library for Computer Vision Research and Beyond
        <https://arxiv.org/abs/2110.11403>`_, 2022.
    """
    if cost_matrix.shape[0] == 0 or cost_matrix.shape[1] == 0:
        return _empty()
    transpose = cost_matrix.shape[0] > cost_matrix.shape[1]
    if transpose:
        cost_matrix = cost_matrix.T
    rows, cols = cost_matrix.shape

    def row_fn(state, row):
        u, v, parent = state

        def search(state):
            u, v, used, minv, path, col = state
            used = used.at[col].set(True)
            free = ~used[1:]
            r = parent[col]
            cur = jnp.where(free, cost_matrix[r - 1, :] - u[r] - v[1:], jnp.inf)
            path = jnp.where(cur < minv, col, path)
            minv = jnp.where(cur < minv, cur, minv)
            col = jnp.argmin(jnp.where(free, minv, jnp.inf)) + 1
            delta = minv.min(where=free, initial=jnp.inf)
            u = u.at[jnp.where(used, parent, rows + 1)].add(delta)  # rows + 1: a spare slot
            v = jnp.where(used, v - delta, v)
            minv = jnp.where(free, minv - delta, minv)
            return u, v, used, minv, path, col

        def back(state):
            parent, col = state
            prev = path[col - 1]
            return parent.at[col].set(parent[prev]), prev

        parent = parent.at[0].set(row + 1)
        state = (u, v, jnp.zeros(cols + 1, bool), jnp.full(cols, jnp.inf), jnp.zeros(cols, int), 0)
        u, v, _, _, path, col = lax.while_loop(lambda s: parent[s[-1]] != 0, search, state)
        parent, _ = lax.while_loop(lambda s: s[1] != 0, back, (parent, col))
        return (u, v, parent), None

    init = (jnp.zeros(rows + 2), jnp.zeros(cols + 1), jnp.zeros(cols + 1, int))
    (_, _, parent), _ = lax.scan(row_fn, init, jnp.arange(rows))
    if rows == cols:  # top_k is costly: skip it for square matrices
        parent, indices = parent[1:], jnp.arange(rows)
    else:
        parent, indices = lax.top_k(parent[1:], rows)
    parent = parent - 1  # back to 0-based rows
    return (indices, parent) if transpose else (parent, indices)


def base_hungarian_algorithm(cost_matrix: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The Hungarian algorithm after Crouse (2016)'s shortest augmenting path pseudocode
    (pp. 1685-1686), the algorithm of ``scipy.optimize.linear_sum_assignment``.

    References:
        Crouse, `On implementing 2D rectangular assignment algorithms
        <https://ieeexplore.ieee.org/document/7738348>`_, 2016.
    """
    if cost_matrix.shape[0] == 0 or cost_matrix.shape[1] == 0:
        return _empty()
    transpose = cost_matrix.shape[1] < cost_matrix.shape[0]
    if transpose:
        cost_matrix = cost_matrix.T
    costs = cost_matrix.astype(float)
    n, m = costs.shape
    init = (
        jnp.zeros(n, costs.dtype),  # u
        jnp.zeros(m, costs.dtype),  # v
        jnp.full(m, -1),  # path
        jnp.full(m, -1),  # row4col
        jnp.full(n, -1),  # col4row
    )
    _, _, _, _, col4row = lax.fori_loop(0, n, lambda r, s: _add_row(costs, r, s), init)
    if transpose:
        order = col4row.argsort()
        return col4row[order], order
    return jnp.arange(n), col4row


def _augmenting_path(costs, u, v, path, row4col, current_row):
    """Dijkstra over reduced costs from ``current_row`` to the nearest free column: returns
    ``(sink, min_value, rows_seen, cols_seen, shortest, path)``; sink -1 if infeasible."""
    n, m = costs.shape

    def scan_column(it, val):
        remaining, min_value, i, shortest, path, lowest, index = val
        j = remaining[it]
        r = min_value + costs[i, j] - u[i] - v[j]
        path = path.at[j].set(jnp.where(r < shortest[j], i, path[j]))
        shortest = shortest.at[j].min(r)
        better = (shortest[j] < lowest) | ((shortest[j] == lowest) & (row4col[j] == -1))
        index = jnp.where(better, it, index)
        return remaining, min_value, i, shortest, path, jnp.minimum(lowest, shortest[j]), index

    def step(val):
        path, i, min_value, num_left, remaining, sr, sc, shortest, sink = val
        sr = sr.at[i].set(True)
        out = lax.fori_loop(
            0, num_left, scan_column, (remaining, min_value, i, shortest, path, jnp.inf, -1)
        )
        remaining, _, _, shortest, path, lowest, index = out
        min_value = lowest
        sink = jnp.where(min_value == jnp.inf, -1, sink)  # an infeasible cost matrix
        j = remaining[index]
        free = row4col[j] == -1
        moved = (
            remaining.at[index].set(remaining[num_left - 1]),
            jnp.where(free, j, sink),
            jnp.where(free, i, row4col[j]),
            sc.at[j].set(True),
            num_left - 1,
        )
        kept = (remaining, sink, i, sc, num_left)
        remaining, sink, i, sc, num_left = jax.tree.map(
            lambda a, b: jnp.where(sink == -1, a, b), moved, kept
        )
        return path, i, min_value, num_left, remaining, sr, sc, shortest, sink

    init = (
        path,
        current_row,
        0,
        m,
        jnp.arange(m)[::-1],
        jnp.zeros(n, bool),
        jnp.zeros(m, bool),
        jnp.full(m, jnp.inf),
        -1,
    )
    path, _, min_value, _, _, sr, sc, shortest, sink = lax.while_loop(
        lambda val: val[-1] == -1, step, init
    )
    return sink, min_value, sr, sc, shortest, path


def _add_row(costs, current_row, state):
    """One outer step: augment the matching by ``current_row`` and update the potentials."""
    u, v, path, row4col, col4row = state
    sink, min_value, sr, sc, shortest, path = _augmenting_path(
        costs, u, v, path, row4col, current_row
    )
    u = u.at[current_row].add(min_value)
    others = sr & (jnp.arange(costs.shape[0]) != current_row)
    u = jnp.where(others, u + min_value - shortest[col4row], u)
    v = jnp.where(sc, v + shortest - min_value, v)

    def augment(carry):
        sink, row4col, col4row, _ = carry
        i = path[sink]
        row4col = row4col.at[sink].set(i)
        col4row, sink = col4row.at[i].set(sink), col4row[i]
        return sink, row4col, col4row, i == current_row

    _, row4col, col4row, _ = lax.while_loop(
        lambda c: ~c[-1], augment, (sink, row4col, col4row, False)
    )
    return u, v, path, row4col, col4row
