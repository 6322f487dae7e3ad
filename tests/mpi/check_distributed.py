"""numba_opt.distributed under mpiexec: every check on every rank, in one launch.

    mpiexec -n 3 python tests/mpi/check_distributed.py            # every check
    mpiexec -n 2 python tests/mpi/check_distributed.py check_clipping ...
    mpiexec -n 3 python tests/mpi/check_distributed.py --save run.npz    # the two halves of a
    mpiexec -n 2 python tests/mpi/check_distributed.py --resume run.npz  # resume across launches

Each rank prints ``RESULT <check> rank <r> ok`` per check (tests/test_distributed.py reads these
lines); a failing check prints ``RESULT <check> rank <r> FAIL <error>`` and aborts the launch (the
other ranks could be left waiting in a collective).  One launch runs every check, so process
start and kernel compilation are paid once.

The oracle is the plain single-process optimizer stepped with the mean of every rank's grads
(each rank computes all ranks' grads from (seed, rank, step), so it can build the mean itself).
"""
import math
import os
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from mpi4py import MPI  # noqa: E402

import numba_opt as nopt  # noqa: E402
from numba_opt import distributed as dist  # noqa: E402
from cases import CASES, SHAPES, TOLERANCE, case_id  # noqa: E402

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()
STEPS = 20


# ------------------------------------------------------------------------------------- helpers
def rank_grads(params, rank, step, seed=100):
    """Rank ``rank``'s grads at ``step``: different on every rank, the same wherever made."""
    rng = np.random.default_rng((seed, rank, step))
    scale = 1.0 + 0.5 * np.sin(step + rank)
    grads = [np.empty_like(p) for p in params]  # in the param's memory order
    for grad in grads:
        grad[...] = scale * rng.standard_normal(grad.shape)
    return grads


def mean_grads(params, step, ranks=SIZE, seed=100):
    every = [rank_grads(params, r, step, seed) for r in range(ranks)]
    return [np.asarray(sum(g[k] for g in every) / ranks, dtype=p.dtype)
            for k, p in enumerate(params)]


def as_dict(grads, names):
    return dict(zip(names, grads))


def assert_close(actual, expected, what):
    for k, (a, b) in enumerate(zip(actual, expected)):
        np.testing.assert_allclose(np.asarray(a), b, **TOLERANCE[np.dtype(b.dtype).type],
                                   err_msg=f"{what}: param {k}")


def assert_same_state_dict(actual, expected, what):
    assert actual["optimizer"] == expected["optimizer"], what
    assert actual["step_count"] == expected["step_count"], (what, actual["step_count"],
                                                            expected["step_count"])
    assert actual["param_groups"] == expected["param_groups"], (what, actual["param_groups"],
                                                                expected["param_groups"])
    assert actual["state"].keys() == expected["state"].keys(), (what, actual["state"].keys(),
                                                                expected["state"].keys())
    for i, entry in expected["state"].items():
        assert actual["state"][i].keys() == entry.keys(), (what, i, actual["state"][i].keys(),
                                                           entry.keys())
        for key, value in entry.items():
            got = actual["state"][i][key]
            if isinstance(value, np.ndarray):
                assert got.shape == value.shape and got.dtype == value.dtype, (what, i, key)
                np.testing.assert_allclose(got, value, **TOLERANCE[value.dtype.type],
                                           err_msg=f"{what}: state[{i}][{key!r}]")
            else:
                assert math.isclose(got, value, rel_tol=1e-12), (what, i, key, got, value)


def expect_error(kind, contains, call):
    """``call()`` must raise ``kind`` on this rank, its message holding every string of
    ``contains``."""
    try:
        call()
    except kind as exc:
        for text in contains:
            assert text in str(exc), f"{text!r} not in the {kind.__name__}: {exc}"
        return exc
    raise AssertionError(f"no {kind.__name__} (expected one containing {contains})")


def mixed_groups(seed=0):
    """Two groups of mixed float32/float64 params, one Fortran-ordered, a 0-d one and one big
    enough for the parallel kernels; the float64 vector spans both groups."""
    rng = np.random.default_rng(seed)
    arrays = [np.asfortranarray(rng.standard_normal((7, 5))),
              rng.standard_normal(5).astype(np.float32),
              rng.standard_normal((3, 4, 2)).astype(np.float32),
              np.asarray(rng.standard_normal()),
              rng.standard_normal((130, 130))]
    return arrays


def groups_of(arrays, **second):
    return [{"params": arrays[:2]}, {"params": arrays[2:], "lr": 3e-3, **second}]


def run_pair(zero, zero_params, plain, plain_params, steps, first=0, ranks=SIZE,
             step_kwargs=None, names=None, seed=100):
    """Step the sharded optimizer with this rank's grads and the plain one with the mean."""
    step_kwargs = step_kwargs or {}
    norms = []
    for t in range(first, first + steps):
        mine = rank_grads(plain_params, RANK, t, seed)
        mean = mean_grads(plain_params, t, ranks, seed)
        if names is not None:
            mine, mean = as_dict(mine, names), as_dict(mean, names)
        norms.append((zero.step(mine, **step_kwargs), plain.step(mean, **step_kwargs)))
    return norms


# -------------------------------------------------------------------------------------- checks
def check_every_optimizer_flat():
    """Every optimizer and option of the CASES table, FlatParams, float64: after 20 steps with
    different grads on every rank, every rank's params and the full state_dict equal the plain
    optimizer stepped with the mean grads."""
    for name, kwargs in CASES:
        what = case_id((name, kwargs))
        rng = np.random.default_rng(0)
        start = [np.asarray(rng.standard_normal(s)) for s in SHAPES]
        flat = nopt.FlatParams([p.copy() for p in start])
        zero = dist.ZeroRedundancyOptimizer(flat, getattr(nopt, name), comm=COMM, **kwargs)
        ref = [p.copy() for p in start]
        plain = getattr(nopt, name)(ref, **kwargs)
        for t in range(STEPS):
            flat.zero_grad()
            for grad, value in zip(flat.grads, rank_grads(ref, RANK, t)):
                grad[...] = value
            zero.step(flat.grads)
            plain.step(mean_grads(ref, t))
        assert zero.step_count == STEPS
        assert_close(flat.params, ref, what)
        assert_same_state_dict(zero.state_dict(), plain.state_dict(), what)
        lo, hi, _ = zero.shard["float64"]
        assert zero.workspace_nbytes == (hi - lo) * 8, "a FlatParams needs no scratch buffer"


def check_lists_dicts_groups_mixed_dtypes():
    """Lists, dicts, and groups with their own lr over mixed float32/float64 params (one
    Fortran-ordered): params and state_dict equal the plain optimizer's."""
    for name, kwargs in [("Adam", {"lr": 1e-2}), ("SGD", {"lr": 1e-2, "momentum": 0.9}),
                         ("NAdam", {}), ("Adagrad", {"initial_accumulator_value": 0.1}),
                         ("RMSprop", {"centered": True, "momentum": 0.5})]:
        cls = getattr(nopt, name)
        start = mixed_groups()
        mine, ref = [p.copy(order="K") for p in start], [p.copy(order="K") for p in start]
        zero = dist.ZeroRedundancyOptimizer(groups_of(mine, weight_decay=0.1), cls, comm=COMM,
                                            **kwargs)
        plain = cls(groups_of(ref, weight_decay=0.1), **kwargs)
        run_pair(zero, mine, plain, ref, STEPS)
        assert_close(mine, ref, f"{name} groups")
        assert_same_state_dict(zero.state_dict(), plain.state_dict(), f"{name} groups")
    names = ["W", "b", "V", "c", "E"]
    start = mixed_groups(1)
    mine = {n: p.copy(order="K") for n, p in zip(names, start)}
    ref = {n: p.copy(order="K") for n, p in zip(names, start)}
    zero = dist.ZeroRedundancyOptimizer(mine, nopt.AdamW, comm=COMM, lr=1e-2)
    plain = nopt.AdamW(ref, lr=1e-2)
    run_pair(zero, list(mine.values()), plain, list(ref.values()), STEPS, names=names)
    assert_close(list(mine.values()), list(ref.values()), "AdamW dict")
    assert_same_state_dict(zero.state_dict(), plain.state_dict(), "AdamW dict")


def check_clipping():
    """max_grad_norm: the norm is the mean grads' global norm, returned on every rank, and the
    clipped steps equal the plain optimizer's; clip_value likewise."""
    for step_kwargs, name, kwargs in [({"max_grad_norm": 0.5}, "Adam", {"lr": 1e-2}),
                                      ({"max_grad_norm": 1e6}, "RAdam", {}),
                                      ({"clip_value": 0.3}, "SGD", {"momentum": 0.9})]:
        cls = getattr(nopt, name)
        start = mixed_groups(2)
        if "max_grad_norm" in step_kwargs:
            # float64 only: float32 grads are averaged in float32, in MPI's order of summation,
            # and through the global norm that would reach the float64 params at ~1e-11
            start = [p.astype(np.float64, order="K") for p in start]
        mine, ref = [p.copy(order="K") for p in start], [p.copy(order="K") for p in start]
        zero = dist.ZeroRedundancyOptimizer(mine, cls, comm=COMM, **kwargs)
        plain = cls(ref, **kwargs)
        norms = run_pair(zero, mine, plain, ref, STEPS, step_kwargs=step_kwargs)
        for got, expected in norms:
            if expected is None:
                assert got is None
            else:
                assert math.isclose(got, expected, rel_tol=1e-12), (got, expected)
        if step_kwargs.get("max_grad_norm") == 0.5:  # clipping was on: the norms are larger
            assert min(expected for _, expected in norms) > 1.0
        assert_close(mine, ref, f"{name} {step_kwargs}")


def check_nonfinite_agreed_by_every_rank():
    """A NaN in one rank's grads only: with skip_if_nonfinite every rank skips the step (the
    mean is NaN), returns the same norm and goes on; with error_if_nonfinite every rank raises
    naming the same param, and nothing changes anywhere."""
    start = [np.asarray(p) for p in mixed_groups(3)]
    flat_start = [p.astype(np.float64) for p in start]
    flat = nopt.FlatParams([p.copy() for p in flat_start])
    zero = dist.ZeroRedundancyOptimizer(flat, nopt.Adam, comm=COMM, lr=1e-2)
    ref = [p.copy() for p in flat_start]
    plain = nopt.Adam(ref, lr=1e-2)
    for t in range(STEPS):
        mine, every = rank_grads(ref, RANK, t), [rank_grads(ref, r, t) for r in range(SIZE)]
        if t == 5:  # the last rank's grad 2 gets a NaN
            every[-1][2][1, 2, 1] = np.nan
            if RANK == SIZE - 1:
                mine = every[-1]
        mean = [np.asarray(sum(g[k] for g in every) / SIZE) for k in range(len(ref))]
        for grad, value in zip(flat.grads, mine):
            grad[...] = value
        before = flat.data.copy()
        norm = zero.step(flat.grads, skip_if_nonfinite=True)
        expected = plain.step(mean, skip_if_nonfinite=True)
        if t == 5:
            assert math.isnan(norm) and math.isnan(expected), (norm, expected)
            assert zero.step_count == 5
            np.testing.assert_array_equal(flat.data, before)
        else:
            assert math.isclose(norm, expected, rel_tol=1e-12), (norm, expected)
    assert zero.step_count == STEPS - 1
    assert_close(flat.params, ref, "skip_if_nonfinite")
    assert_same_state_dict(zero.state_dict(), plain.state_dict(), "skip_if_nonfinite")

    mine = [p.copy(order="K") for p in start]
    zero = dist.ZeroRedundancyOptimizer(mine, nopt.SGD, comm=COMM, lr=0.1, momentum=0.9)
    zero.step(rank_grads(mine, RANK, 0))
    before = [p.copy() for p in mine]
    grads = rank_grads(mine, RANK, 1)
    if RANK == SIZE - 1:
        grads[4][3, 3] = np.inf
    expect_error(ValueError, ["params[4]", "non-finite", f"{SIZE} ranks"],
                 lambda: zero.step(grads, error_if_nonfinite=True))
    assert zero.step_count == 1
    for a, b in zip(mine, before):
        np.testing.assert_array_equal(a, b)
    zero.step(rank_grads(mine, RANK, 1), error_if_nonfinite=True)  # the ranks are still in step
    assert zero.step_count == 2


def check_state_bytes_per_rank():
    """Each rank holds the state of its own element range only: 1/N of the plain optimizer's
    bytes (to one element), and the ranks' bytes add up to the plain optimizer's."""
    start = mixed_groups(4)
    total = {np.dtype(np.float32): 0, np.dtype(np.float64): 0}
    for p in start:
        total[p.dtype] += p.size
    zero = dist.ZeroRedundancyOptimizer([p.copy(order="K") for p in start], nopt.Adam,
                                        comm=COMM)
    assert zero.state_nbytes == 0
    zero.step(rank_grads(start, RANK, 0))
    expected = 0
    for dtype, count in total.items():
        lo, hi, whole = zero.shard[str(dtype)]
        assert whole == count and (lo, hi) == (RANK * count // SIZE, (RANK + 1) * count // SIZE)
        expected += 2 * (hi - lo) * dtype.itemsize  # exp_avg and exp_avg_sq
        assert hi - lo <= math.ceil(count / SIZE)
    assert zero.state_nbytes == expected, (zero.state_nbytes, expected)
    plain = nopt.Adam([p.copy(order="K") for p in start])
    plain.step(rank_grads(start, RANK, 0))
    plain_bytes = sum(v.nbytes for s in plain.state for k, v in s.items()
                      if isinstance(v, np.ndarray))
    assert COMM.allreduce(zero.state_nbytes) == plain_bytes
    assert zero.state_nbytes <= plain_bytes / SIZE + 2 * 2 * 8


def check_resume_on_any_number_of_ranks():
    """A state_dict taken on N ranks loads into a plain optimizer and into M ranks (every M up
    to N, on sub-communicators; and N ranks from a 1-rank state_dict), and the run continues on
    the trajectory of the uninterrupted plain optimizer."""
    for name, kwargs in [("NAdam", {"lr": 1e-2}), ("SGD", {"lr": 0.05, "momentum": 0.9}),
                         ("Adam", {"amsgrad": True})]:
        cls = getattr(nopt, name)
        start = mixed_groups(5)
        mine, ref = [p.copy(order="K") for p in start], [p.copy(order="K") for p in start]
        zero = dist.ZeroRedundancyOptimizer(groups_of(mine), cls, comm=COMM, **kwargs)
        plain = cls(groups_of(ref), **kwargs)
        run_pair(zero, mine, plain, ref, 7)
        saved, saved_params = zero.state_dict(), [p.copy(order="K") for p in mine]
        for m in range(1, SIZE + 1):
            sub = COMM.Split(0 if RANK < m else MPI.UNDEFINED, RANK)
            if sub != MPI.COMM_NULL:
                what = f"{name}: {SIZE} ranks -> {m}"
                resumed = [p.copy(order="K") for p in saved_params]
                again = dist.ZeroRedundancyOptimizer(groups_of(resumed), cls, comm=sub, **kwargs)
                again.load_state_dict(saved)
                assert again.step_count == 7
                uninterrupted = [p.copy(order="K") for p in saved_params]
                loaded = cls(groups_of(uninterrupted), **kwargs)
                loaded.load_state_dict(saved)  # into a plain optimizer
                for t in range(7, 14):
                    again.step(rank_grads(resumed, RANK, t))
                    loaded.step(mean_grads(uninterrupted, t, ranks=m))
                assert_close(resumed, uninterrupted, what)
                assert_same_state_dict(again.state_dict(), loaded.state_dict(), what)
                sub.Free()
        # and back: a plain (one-process) state_dict onto N ranks
        run_pair(zero, mine, plain, ref, 3, first=7)
        onto = [p.copy(order="K") for p in ref]
        spread = dist.ZeroRedundancyOptimizer(groups_of(onto), cls, comm=COMM, **kwargs)
        spread.load_state_dict(plain.state_dict())
        run_pair(spread, onto, plain, ref, 5, first=10)
        assert_close(onto, ref, f"{name}: plain -> {SIZE} ranks")


def check_stochastic_rounding():
    """float32 params with bfloat16 state rounded stochastically: the sharded optimizer stays
    with the plain one stepped with the mean grads (to a bfloat16 ulp: a mean that differs in
    its last float32 bit can round the other way), its state_dict carries the seed and loads
    into a plain optimizer, and a sharded run resumed from its state_dict repeats the
    uninterrupted one bit for bit."""
    options = dict(state_dtype="bfloat16", stochastic_rounding=True, rounding_seed=7)
    start = [p.astype(np.float32) for p in mixed_groups(3)]
    mine, ref, again = ([p.copy(order="K") for p in start] for _ in range(3))
    zero = dist.ZeroRedundancyOptimizer(mine, nopt.Adam, comm=COMM, lr=1e-2, **options)
    plain = nopt.Adam(ref, lr=1e-2, **options)
    run_pair(zero, mine, plain, ref, 3)
    saved = zero.state_dict()
    assert saved["rounding_seed"] == 7 and zero.rounding_seed == 7
    nopt.Adam([p.copy(order="K") for p in ref], lr=1e-2, **options).load_state_dict(saved)
    for p, q in zip(again, mine):
        p[...] = q
    resumed = dist.ZeroRedundancyOptimizer(again, nopt.Adam, comm=COMM, lr=1e-2,
                                           state_dtype="bfloat16", stochastic_rounding=True)
    resumed.load_state_dict(saved)  # brings seed 7 back
    assert resumed.rounding_seed == 7
    run_pair(zero, mine, plain, ref, 3, first=3)
    run_pair(resumed, again, nopt.Adam([p.copy(order="K") for p in ref], lr=1e-2, **options),
             [p.copy(order="K") for p in ref], 3, first=3)
    for a, b in zip(again, mine):
        assert a.tobytes() == b.tobytes(), "a resumed sharded run differs"
    for k, (a, b) in enumerate(zip(mine, ref)):
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3, err_msg=f"param {k}")
    expect_error(ValueError, ["rounding_seed"], lambda: dist.ZeroRedundancyOptimizer(
        [p.copy() for p in start], nopt.Adam, comm=COMM, state_dtype="bfloat16").load_state_dict(
            saved))


def check_int8_state():
    """state_dtype='int8': every rank's range starts on a block of 256 of its param, slices of
    params of 4096 elements or more keep codes and scales (smaller ones float32), the gathered
    state_dict has the plain optimizer's keys, dtypes and shapes and loads into it, the params
    stay with the plain optimizer's (a mean grad that differs in its last bit can pick the
    neighbouring code), a plain state_dict loads onto the ranks, and a resumed sharded run
    repeats the uninterrupted one bit for bit."""
    rng = np.random.default_rng(11)
    start = [rng.standard_normal(s).astype(np.float32) for s in [(4101,), (130, 160), (100,), ()]]
    for name, kwargs in [("Adam", {"lr": 1e-2}), ("SGD", {"lr": 0.05, "momentum": 0.9})]:
        cls = getattr(nopt, name)
        mine, ref, again = ([p.copy() for p in start] for _ in range(3))
        zero = dist.ZeroRedundancyOptimizer(mine, cls, comm=COMM, state_dtype="int8", **kwargs)
        plain = cls(ref, state_dtype="int8", **kwargs)
        vector = zero._vectors[0]
        for bound in vector.bounds:
            k = max(j for j, s0 in enumerate(vector.starts) if s0 <= bound) if bound else 0
            assert bound == vector.total or (bound - vector.starts[k]) % 256 == 0 \
                or bound == vector.starts[k] + vector.sizes[k], (name, vector.bounds)
        run_pair(zero, mine, plain, ref, 4)
        saved, expected = zero.state_dict(), plain.state_dict()
        assert saved["state"].keys() == expected["state"].keys()
        for i, entry in expected["state"].items():
            assert saved["state"][i].keys() == entry.keys(), (name, i)
            for key, value in entry.items():
                got = saved["state"][i][key]
                if isinstance(value, np.ndarray):
                    assert got.shape == value.shape and got.dtype == value.dtype, (name, i, key)
                    if got.dtype == np.uint8:  # codes: nearly all the same
                        assert np.mean(got == value) > 0.99, (name, i, key)
        assert saved["state"][1]["exp_avg" if name == "Adam" else "momentum_buffer"].dtype \
            == np.uint8 and saved["state"][2][next(iter(cls.state_names))].dtype == np.float32
        cls([p.copy() for p in ref], state_dtype="int8", **kwargs).load_state_dict(saved)
        for k, (a, b) in enumerate(zip(mine, ref)):
            np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3, err_msg=f"{name} param {k}")
        for p, q in zip(again, mine):
            p[...] = q
        resumed = dist.ZeroRedundancyOptimizer(again, cls, comm=COMM, state_dtype="int8",
                                               **kwargs)
        resumed.load_state_dict(saved)
        run_pair(zero, mine, plain, ref, 3, first=4)
        run_pair(resumed, again, cls([p.copy() for p in ref], state_dtype="int8", **kwargs),
                 [p.copy() for p in ref], 3, first=4)
        for a, b in zip(again, mine):
            assert a.tobytes() == b.tobytes(), f"{name}: a resumed sharded int8 run differs"
        onto = [p.copy() for p in ref]
        spread = dist.ZeroRedundancyOptimizer(onto, cls, comm=COMM, state_dtype="int8", **kwargs)
        spread.load_state_dict(plain.state_dict())  # a plain int8 state_dict onto the ranks
        run_pair(spread, onto, plain, ref, 2, first=7)
        for k, (a, b) in enumerate(zip(onto, ref)):
            np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-3, err_msg=f"{name} param {k}")


def check_add_param_group():
    """add_param_group on every rank re-cuts the shards over every group: the sharded run goes
    on with the plain optimizer that got the same group (the earlier params' state carried
    over, the new ones' state fresh), its state_dict equals the plain one's, and refusals (a
    param already there, a group that differs between ranks) raise on every rank and change
    nothing."""
    start = mixed_groups(5)
    mine, ref = ([p.copy(order="K") for p in start] for _ in range(2))
    zero = dist.ZeroRedundancyOptimizer(groups_of(mine[:3]), nopt.Adam, comm=COMM, lr=1e-2,
                                        amsgrad=True)
    plain = nopt.Adam(groups_of(ref[:3]), lr=1e-2, amsgrad=True)
    run_pair(zero, mine[:3], plain, ref[:3], 3)
    shard_before = zero.shard
    expect_error(ValueError, ["shares memory"], lambda: zero.add_param_group(
        {"params": [mine[0]]}))
    if SIZE > 1:
        expect_error(ValueError, ["same on every rank", "param_groups[2]"],
                     lambda: zero.add_param_group({"params": mine[3:], "lr": 1e-3 * (1 + RANK)}))
    assert zero.shard == shard_before and len(zero.param_groups) == 2
    for opt, params in ((zero, mine), (plain, ref)):
        opt.add_param_group({"params": params[3:], "lr": 2e-3, "betas": (0.8, 0.99)})
    assert len(zero.param_groups) == 3 and zero.param_groups[2]["betas"] == (0.8, 0.99)
    assert_same_state_dict(zero.state_dict(), plain.state_dict(), "after add_param_group")
    run_pair(zero, mine, plain, ref, 4, first=3)
    assert_close(mine, ref, "after add_param_group")
    assert_same_state_dict(zero.state_dict(), plain.state_dict(), "stepped after adding")
    named = dist.ZeroRedundancyOptimizer({"w": np.zeros(4)}, nopt.SGD, comm=COMM)
    expect_error(TypeError, ["named params", "list"], lambda: named.add_param_group(
        {"params": [np.zeros(3)]}))


def check_load_state_dict_errors_on_every_rank():
    """A state_dict that one rank finds bad (another optimizer's, a wrong shape, a bad lr, not a
    dict) makes every rank raise, naming the rank, and changes nothing anywhere."""
    last = SIZE - 1
    start = mixed_groups(9)
    mine, ref = [p.copy(order="K") for p in start], [p.copy(order="K") for p in start]
    zero = dist.ZeroRedundancyOptimizer(groups_of(mine), nopt.Adam, comm=COMM, lr=1e-2)
    plain = nopt.Adam(groups_of(ref), lr=1e-2)
    run_pair(zero, mine, plain, ref, 3)
    saved = zero.state_dict()
    run_pair(zero, mine, plain, ref, 2, first=3)

    def on_last(change):
        """The saved state_dict, changed on the last rank only."""
        if RANK != last:
            return saved
        bad = {**saved, "state": {i: dict(e) for i, e in saved["state"].items()},
               "param_groups": [dict(g) for g in saved["param_groups"]]}
        change(bad)
        return bad

    elsewhere = [] if RANK == last else [f"on rank {last}"]
    expect_error(ValueError, ["state_dict['state'][4]['exp_avg']", "shape"] + elsewhere,
                 lambda: zero.load_state_dict(on_last(
                     lambda sd: sd["state"][4].update(exp_avg=np.zeros((3, 3))))))
    expect_error(ValueError, ["comes from SGD"] + elsewhere, lambda: zero.load_state_dict(
        on_last(lambda sd: sd.update(optimizer="SGD"))))
    expect_error(ValueError, ["param_groups[1]", "lr"] + elsewhere, lambda: zero.load_state_dict(
        on_last(lambda sd: sd["param_groups"][1].update(lr=-1.0))))
    expect_error(TypeError, ["state_dict['state']"] + elsewhere, lambda: zero.load_state_dict(
        on_last(lambda sd: sd.update(state=[1, 2]))))
    assert zero.step_count == 5 and zero.param_groups[1]["lr"] == 3e-3
    run_pair(zero, mine, plain, ref, 3, first=5)  # nothing changed: still on plain's trajectory
    assert_close(mine, ref, "after refused loads")


def check_hyper_parameter_edits():
    """param_groups edits between steps (an lr schedule, a betas list edited in place) take
    effect at the next step on every rank, as on the plain optimizer."""
    start = mixed_groups(6)
    mine, ref = [p.copy(order="K") for p in start], [p.copy(order="K") for p in start]
    zero = dist.ZeroRedundancyOptimizer(groups_of(mine), nopt.Adam, comm=COMM, lr=1e-2,
                                        betas=[0.9, 0.99])
    plain = nopt.Adam(groups_of(ref), lr=1e-2, betas=[0.9, 0.99])
    for t in range(STEPS):
        for opt in (zero, plain):
            for group in opt.param_groups:
                group["lr"] = group["lr"] * 0.9
            if t == 10:
                opt.param_groups[0]["betas"][0] = 0.5
        run_pair(zero, mine, plain, ref, 1, first=t)
    assert zero.local_optimizer is None or zero.local_optimizer.param_groups[0]["betas"][0] \
        == 0.5
    assert_close(mine, ref, "lr and betas edits")
    assert_same_state_dict(zero.state_dict(), plain.state_dict(), "lr and betas edits")


def check_construction_errors_on_every_rank():
    """Ranks whose params differ in shape, dtype or hyper-parameters, or fail a local check,
    make every rank raise (no hang), naming the param and the ranks."""
    last = SIZE - 1

    def params(shape_on_last=(5,), dtype_on_last=np.float64):
        shape, dtype = (shape_on_last, dtype_on_last) if RANK == last else ((5,), np.float64)
        return [np.zeros((3, 2)), np.zeros(shape, dtype), np.zeros(4)]

    if SIZE > 1:
        expect_error(ValueError, ["same on every rank", "params[1]", "(5,)", "(6,)",
                                  f"rank {last}"],
                     lambda: dist.ZeroRedundancyOptimizer(params((6,)), nopt.Adam, comm=COMM))
        expect_error(ValueError, ["params[1]", "float32", f"rank {last}"],
                     lambda: dist.ZeroRedundancyOptimizer(params(dtype_on_last=np.float32),
                                                          nopt.Adam, comm=COMM))
        expect_error(ValueError, ["param_groups[0]", "lr", f"rank {last}"],
                     lambda: dist.ZeroRedundancyOptimizer(
                         params(), nopt.SGD, comm=COMM, lr=0.1 if RANK == last else 0.2))
        expect_error(ValueError, ["broadcast_params", "params[1]", f"rank {last}"],
                     lambda: dist.broadcast_params(params((6,)), COMM))
        expect_error(ValueError, ["broadcast_params", "root", f"rank {last}"],
                     lambda: dist.broadcast_params(params(), COMM, root=int(RANK == last)))
    # one rank's params fail its own checks: it raises its error, the others name it
    bad = params()
    if RANK == last:
        bad[2] = np.zeros(8)[::2]
    expect_error(ValueError, ["params[2]", "not contiguous"] + (
        [] if RANK == last else [f"on rank {last}"]),
        lambda: dist.ZeroRedundancyOptimizer(bad, nopt.Adam, comm=COMM))
    expect_error(TypeError, ["optimizer_class"],
                 lambda: dist.ZeroRedundancyOptimizer(params(), "Adam", comm=COMM))
    expect_error(TypeError, ["unexpected keyword"],
                 lambda: dist.ZeroRedundancyOptimizer(params(), nopt.Adam, comm=COMM, momentum=1))
    expect_error(TypeError, ["comm"],
                 lambda: dist.ZeroRedundancyOptimizer(params(), nopt.Adam, comm="world"))
    # the ranks are still in step: a good one works
    good = params()
    zero = dist.ZeroRedundancyOptimizer(good, nopt.Adam, comm=None)  # None: COMM_WORLD
    zero.step(rank_grads(good, RANK, 0))
    assert zero.size == zero.world_size == SIZE and zero.rank == RANK


def check_step_errors_on_every_rank():
    """Bad grads on one rank, None grads, or options and hyper-parameters that differ across
    ranks: every rank raises and nothing changes anywhere; the next good step works."""
    last = SIZE - 1
    start = mixed_groups(7)
    mine, ref = [p.copy(order="K") for p in start], [p.copy(order="K") for p in start]
    zero = dist.ZeroRedundancyOptimizer(mine, nopt.Adam, comm=COMM, lr=1e-2)
    plain = nopt.Adam(ref, lr=1e-2)
    run_pair(zero, mine, plain, ref, 2)
    before = [p.copy() for p in mine]

    def unchanged():
        assert zero.step_count == 2
        for a, b in zip(mine, before):
            np.testing.assert_array_equal(a, b)

    grads = rank_grads(mine, RANK, 2)
    if RANK == last:
        grads[0] = np.zeros((5, 7))
    expect_error(ValueError, ["params[0]", "shape"] + ([] if RANK == last
                                                       else [f"on rank {last}"]),
                 lambda: zero.step(grads))
    unchanged()
    grads = rank_grads(mine, RANK, 2)
    if RANK == 0:
        grads[3] = None
    expect_error(ValueError, ["params[3]", "None"], lambda: zero.step(grads))
    unchanged()
    expect_error(ValueError, ["got 4 grads for 5 params"],
                 lambda: zero.step(rank_grads(mine, RANK, 2)[:4]))
    expect_error(ValueError, ["not both"],
                 lambda: zero.step(rank_grads(mine, RANK, 2), max_grad_norm=1.0,
                                   clip_value=1.0))
    if SIZE > 1:
        expect_error(ValueError, ["options", "max_grad_norm", f"rank {last}"],
                     lambda: zero.step(rank_grads(mine, RANK, 2),
                                       max_grad_norm=1.0 if RANK == last else None))
        zero.param_groups[0]["lr"] = 0.5 if RANK == last else 1e-2
        expect_error(ValueError, ["param_groups[0]", "lr", f"rank {last}"],
                     lambda: zero.step(rank_grads(mine, RANK, 2)))
        zero.param_groups[0]["lr"] = 1e-2
    zero.param_groups[0]["lr"] = -1.0
    expect_error(ValueError, ["lr"], lambda: zero.step(rank_grads(mine, RANK, 2)))
    zero.param_groups[0]["lr"] = 1e-2
    unchanged()
    run_pair(zero, mine, plain, ref, 3, first=2)
    assert_close(mine, ref, "after refused steps")


def check_empty_shards_and_empty_params():
    """Fewer elements than ranks (some ranks hold no shard: no local optimizer, yet they take
    part in every collective) and a zero-size param."""
    start = [np.array([0.5, -1.0]), np.zeros(0), np.array(2.0)]
    mine, ref = [p.copy() for p in start], [p.copy() for p in start]
    zero = dist.ZeroRedundancyOptimizer(mine, nopt.NAdam, comm=COMM, lr=0.1)
    plain = nopt.NAdam(ref, lr=0.1)
    if SIZE > 3:
        assert zero.local_optimizer is None or RANK < 3
    run_pair(zero, mine, plain, ref, STEPS, step_kwargs={"max_grad_norm": 1.0})
    assert_close(mine, ref, "tiny")
    assert_same_state_dict(zero.state_dict(), plain.state_dict(), "tiny")
    if RANK >= 3:
        assert zero.local_optimizer is None and zero.state_nbytes == 0


def check_average_gradients():
    """average_gradients leaves the mean of the ranks' grads in place: lists of mixed dtypes
    (one buffer per dtype), dicts, one array, a FlatParams; and bad grads are refused."""
    start = mixed_groups(8)
    grads = rank_grads(start, RANK, 0)
    assert dist.average_gradients(grads, COMM) is grads
    assert_close(grads, mean_grads(start, 0), "list")
    named = as_dict(rank_grads(start, RANK, 1), "abcde")
    dist.average_gradients(named)
    assert_close(list(named.values()), mean_grads(start, 1), "dict")
    one = rank_grads(start, RANK, 2)[4]
    dist.average_gradients(one, COMM)
    assert_close([one], mean_grads(start, 2)[4:], "one array")
    # plain data parallel: FlatParams, averaged grads, a normal optimizer on every rank
    f64 = [p.astype(np.float64) for p in start]
    flat = nopt.FlatParams([p.copy() for p in f64])
    opt = nopt.Adam(flat, lr=1e-2)
    ref = [p.copy() for p in f64]
    plain = nopt.Adam(ref, lr=1e-2)
    for t in range(5):
        for grad, value in zip(flat.grads, rank_grads(ref, RANK, t)):
            grad[...] = value
        dist.average_gradients(flat, COMM)
        opt.step(flat.grads)
        plain.step(mean_grads(ref, t))
    assert_close(flat.params, ref, "FlatParams data parallel")
    expect_error(ValueError, ["grads[1]", "not contiguous"],
                 lambda: dist.average_gradients([np.zeros(3), np.zeros(6)[::2]], COMM))
    expect_error(TypeError, ["grads[0]", "int64"],
                 lambda: dist.average_gradients([np.zeros(3, np.int64)], COMM))
    expect_error(ValueError, ["grads['b']", "None"],
                 lambda: dist.average_gradients({"a": np.zeros(2), "b": None}, COMM))
    expect_error(ValueError, ["shares memory"],
                 lambda: dist.average_gradients([one, one], COMM))
    expect_error(TypeError, ["FlatParams"], lambda: dist.average_gradients(3.0, COMM))


def check_broadcast_params():
    """broadcast_params gives every rank the root's values: FlatParams (one Bcast), lists of
    mixed dtypes (packed per dtype), dicts and groups."""
    root = SIZE - 1
    mine, roots = mixed_groups(10 + RANK), mixed_groups(10 + root)
    assert dist.broadcast_params(mine, COMM, root=root) is mine
    for a, b in zip(mine, roots):
        np.testing.assert_array_equal(a, b)
    flat = nopt.FlatParams([p.astype(np.float64) for p in mixed_groups(20 + RANK)])
    dist.broadcast_params(flat, COMM)
    for a, b in zip(flat.params, mixed_groups(20)):
        np.testing.assert_array_equal(a, b.astype(np.float64))
    named = dict(zip("abcde", mixed_groups(30 + RANK)))
    dist.broadcast_params(groups_of(list(named.values())), COMM, root=0)
    for a, b in zip(named.values(), mixed_groups(30)):
        np.testing.assert_array_equal(a, b)
    expect_error(ValueError, ["root"], lambda: dist.broadcast_params(mine, COMM, root=SIZE))


def check_cuda_simulator():
    """Under numba's CUDA simulator: device params (FlatParams and a list) go through the same
    collectives; the results equal the plain CPU optimizer's."""
    from numba import config
    if not config.ENABLE_CUDASIM:
        return  # a real GPU would need a CUDA-aware MPI: not assumed here
    from numba import cuda
    from numba_opt import _cuda
    _cuda.THREADS_PER_BLOCK, _cuda.MAX_BLOCKS = 4, 3  # the simulator runs a thread per thread
    shapes = [(3, 2), (4,), (5,)]
    start = [np.random.default_rng(k).standard_normal(s) for k, s in enumerate(shapes)]
    flat = nopt.FlatParams([cuda.to_device(p) for p in start])
    listed = [cuda.to_device(p) for p in start]
    zero_flat = dist.ZeroRedundancyOptimizer(flat, nopt.Adam, comm=COMM, lr=0.1)
    zero_list = dist.ZeroRedundancyOptimizer(listed, nopt.Adam, comm=COMM, lr=0.1)
    assert zero_flat.device == "cuda"
    ref = [p.copy() for p in start]
    plain = nopt.Adam(ref, lr=0.1)
    for t in range(4):
        mine = rank_grads(ref, RANK, t)
        for grad, value in zip(flat.grads, mine):
            grad.copy_to_device(value)
        zero_flat.step(flat.grads, max_grad_norm=2.0)
        zero_list.step([cuda.to_device(g) for g in mine], max_grad_norm=2.0)
        plain.step(mean_grads(ref, t), max_grad_norm=2.0)
    assert_close([p.copy_to_host() for p in flat.params], ref, "simulated device, FlatParams")
    assert_close([p.copy_to_host() for p in listed], ref, "simulated device, list")
    assert_same_state_dict(zero_list.state_dict(), plain.state_dict(), "simulated device")
    grads = [cuda.to_device(g) for g in rank_grads(ref, RANK, 9)]
    dist.average_gradients(grads, COMM)
    assert_close([g.copy_to_host() for g in grads], mean_grads(ref, 9), "device average")


# ---------------------------------------------------------------------- resume across launches
def shared_directory():
    """A fresh directory every rank sees (made by rank 0; one machine here)."""
    import tempfile
    return COMM.bcast(tempfile.mkdtemp(prefix="nopt-mpi-") if RANK == 0 else None, root=0)


def check_checkpoints_and_schedulers():
    """nopt.save / nopt.load on a sharded optimizer are collective: the file (written by rank
    0, no temp left) loads into a plain optimizer and back onto the ranks, and a scheduler
    drives the sharded optimizer's lrs as it drives the plain one's; the run continues on the
    uninterrupted plain trajectory.  An error on some ranks is raised on every rank."""
    import glob
    directory = shared_directory()
    path = os.path.join(directory, "run.npz")
    start = mixed_groups(7)
    mine, ref = [p.copy(order="K") for p in start], [p.copy(order="K") for p in start]
    zero = dist.ZeroRedundancyOptimizer(groups_of(mine), nopt.Adam, comm=COMM, lr=1e-2)
    plain = nopt.Adam(groups_of(ref), lr=1e-2)
    schedulers = [nopt.lr_scheduler.StepLR(o, step_size=2, gamma=0.5) for o in (zero, plain)]
    for t in range(5):
        run_pair(zero, mine, plain, ref, 1, first=t)
        for scheduler in schedulers:
            scheduler.step()
    assert [g["lr"] for g in zero.param_groups] == [g["lr"] for g in plain.param_groups]
    nopt.save(zero, path)
    COMM.Barrier()
    assert os.path.exists(path) and not glob.glob(path + ".*.tmp"), os.listdir(directory)
    # into a plain optimizer: the same state and params as the plain run's
    into_plain = [np.zeros_like(p, order="K") for p in start]
    loaded = nopt.Adam(groups_of(into_plain), lr=0.5)
    nopt.load(loaded, path)
    assert_same_state_dict(loaded.state_dict(), plain.state_dict(), "checkpoint -> plain")
    assert_close(into_plain, ref, "checkpoint -> plain params")
    # back onto the ranks, with the scheduler's position, and on
    again = [np.zeros_like(p, order="K") for p in start]
    resumed = dist.ZeroRedundancyOptimizer(groups_of(again), nopt.Adam, comm=COMM, lr=0.5)
    nopt.load(resumed, path)
    scheduler = nopt.lr_scheduler.StepLR(resumed, step_size=2, gamma=0.5)
    scheduler.load_state_dict(schedulers[0].state_dict())
    for t in range(5, 9):
        run_pair(resumed, again, plain, ref, 1, first=t)
        scheduler.step()
        schedulers[1].step()
    assert_close(again, ref, "checkpoint -> ranks, resumed")
    assert_same_state_dict(resumed.state_dict(), plain.state_dict(), "checkpoint -> ranks")
    # errors: a file only some ranks can read, and saving over a directory
    before = resumed.state_dict()
    broken = os.path.join(directory, f"broken-{RANK}.npz")
    with open(broken, "wb") as f:
        f.write(b"not a checkpoint")
    # the last rank reads a broken file, the others the good one: every rank raises
    expect_error(ValueError, [] if RANK == SIZE - 1 else [f"on rank {SIZE - 1}"],
                 lambda: nopt.load(resumed, broken if RANK == SIZE - 1 else path))
    assert_same_state_dict(resumed.state_dict(), before, "after a refused load")
    expect_error(OSError, ["directory"], lambda: nopt.save(resumed, directory))
    COMM.Barrier()


def save_run(path):
    """First half of a run on this many ranks: 6 steps, then the full state_dict and the params
    to ``path`` with nopt.save (collective; rank 0 writes)."""
    start = mixed_groups(40)
    mine = [p.copy(order="K") for p in start]
    zero = dist.ZeroRedundancyOptimizer(groups_of(mine), nopt.NAdam, comm=COMM, lr=1e-2)
    for t in range(6):
        zero.step(rank_grads(mine, RANK, t))
    nopt.save(zero, path)  # collective: rank 0 writes
    if RANK == 0:
        with open(path + ".ranks", "w") as f:
            f.write(str(SIZE))
    print(f"RESULT save rank {RANK} ok", flush=True)


def resume_run(path):
    """Second half on this many ranks; compared with one uninterrupted plain run whose first
    6 steps used the saving launch's number of ranks."""
    with open(path + ".ranks") as f:
        saved = {"ranks": int(f.read())}
    start = mixed_groups(40)
    ref = [p.copy(order="K") for p in start]
    plain = nopt.NAdam(groups_of(ref), lr=1e-2)
    for t in range(6):
        plain.step(mean_grads(ref, t, ranks=saved["ranks"]))
    mine = [np.zeros_like(p, order="K") for p in start]
    zero = dist.ZeroRedundancyOptimizer(groups_of(mine), nopt.NAdam, comm=COMM, lr=0.5)
    nopt.load(zero, path)  # collective: every rank reads its shard and the params
    assert_close(mine, ref, "the saved params")
    assert zero.param_groups[0]["lr"] == 1e-2  # the saved hyper-parameters win
    for t in range(6, 12):
        zero.step(rank_grads(mine, RANK, t))
        plain.step(mean_grads(ref, t))
    assert_close(mine, ref, f"{saved['ranks']} ranks -> {SIZE}")
    assert_same_state_dict(zero.state_dict(), plain.state_dict(), "resumed")
    print(f"RESULT resume rank {RANK} ok", flush=True)


# ---------------------------------------------------------------------------------------- main
def main(argv):
    if argv[:1] == ["--save"]:
        return save_run(argv[1])
    if argv[:1] == ["--resume"]:
        return resume_run(argv[1])
    checks = [(name, f) for name, f in globals().items() if name.startswith("check_")]
    if argv:
        checks = [(name, f) for name, f in checks if name in argv]
    for name, check in checks:
        started = time.perf_counter()
        try:
            check()
        except Exception as exc:
            detail = "".join(traceback.format_exception(exc)[-3:]).replace("\n", " | ")
            print(f"RESULT {name} rank {RANK} FAIL {type(exc).__name__}: {detail}", flush=True)
            # the other ranks may be waiting in a collective this rank will never reach: end
            # the whole launch now rather than let it hang until the test's timeout
            COMM.Abort(1)
        print(f"RESULT {name} rank {RANK} ok {time.perf_counter() - started:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
