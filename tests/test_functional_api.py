"""The stateless *_step functions' signatures, found thin by mutation testing (tests/MUTATION.md):
their hyper-parameters are keyword-only, and their defaults are the optimizer classes' (torch's)."""
import inspect

import numpy as np
import pytest

import numba_opt as nopt
import numba_opt.functional as F

PAIRS = [(F.sgd_step, nopt.SGD), (F.rmsprop_step, nopt.RMSprop), (F.adam_step, nopt.Adam),
         (F.adamw_step, nopt.AdamW), (F.adagrad_step, nopt.Adagrad), (F.adamax_step, nopt.Adamax),
         (F.radam_step, nopt.RAdam), (F.nadam_step, nopt.NAdam), (F.adadelta_step, nopt.Adadelta),
         (F.rprop_step, nopt.Rprop), (F.asgd_step, nopt.ASGD), (F.lion_step, nopt.Lion),
         (F.adafactor_step, nopt.Adafactor), (F.muon_step, nopt.Muon)]


@pytest.mark.parametrize("fn, cls", PAIRS, ids=lambda v: getattr(v, "__name__", ""))
def test_step_function_defaults_are_the_class_defaults(fn, cls):
    mine = inspect.signature(fn).parameters
    theirs = inspect.signature(cls).parameters
    shared = [name for name in mine if name in theirs and mine[name].default is not inspect._empty]
    assert "lr" in shared
    for name in shared:
        assert mine[name].default == theirs[name].default, name


@pytest.mark.parametrize("fn, cls", PAIRS, ids=lambda v: getattr(v, "__name__", ""))
def test_hyper_parameters_are_keyword_only(fn, cls):
    """A positional lr would land silently in the wrong slot: lr and every other hyper-parameter
    can only be named."""
    params = inspect.signature(fn).parameters
    assert params["lr"].kind is inspect.Parameter.KEYWORD_ONLY
    arrays = [name for name, p in params.items() if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    with pytest.raises(TypeError):
        fn(*[np.zeros(3) for _ in arrays], 0.1)


@pytest.mark.parametrize("fn, first, second", [(F.adam_step, "exp_avg", "exp_avg_sq"),
                                               (F.rmsprop_step, "square_avg", None)])
def test_a_state_of_a_dtype_no_option_offers_is_named_and_nothing_changes(fn, first, second):
    """A float64 first state beside a float32 param (and a right second state) is the dtype
    error of that state, before anything is written."""
    param, grad = np.ones(4, np.float32), np.ones(4, np.float32)
    states = [np.zeros(4)] + ([np.zeros(4, np.float32)] if second else [])
    with pytest.raises(TypeError, match=f"^{first} has dtype float64 but param has dtype "
                                        "float32; numba_opt does not convert dtypes silently$"):
        fn(param, grad, *states, step=1) if fn is F.adam_step else fn(param, grad, *states)
    assert np.all(param == 1) and all(np.all(s == 0) for s in states)


def _refused(error, match, fn, *arrays, **kwargs):
    """``fn(*arrays, **kwargs)`` raises ``error`` matching ``match`` and changes no array."""
    before = [a.copy() for a in arrays]
    with pytest.raises(error, match=match):
        fn(*arrays, **kwargs)
    for a, b in zip(arrays, before):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("etas", [(1.0, 1.2), (0.5, 1.0), (0.0, 1.2)])
def test_rprop_etas_must_straddle_one_strictly(etas):
    """torch's 0 < etaminus < 1 < etaplus: an eta of exactly 1 (or 0) is refused."""
    arrays = (np.ones(3), np.ones(3), np.zeros(3), np.zeros(3))
    _refused(ValueError, "etas must satisfy 0 < etaminus < 1 < etaplus", F.rprop_step, *arrays,
             step=1, etas=etas)
    with pytest.raises(ValueError, match="etas must satisfy"):
        nopt.Rprop([np.ones(3)], etas=etas)


@pytest.mark.parametrize("mu", [0.0, -0.5])
def test_asgd_mu_must_be_in_zero_one(mu):
    _refused(ValueError, r"mu must be in \(0, 1\]", F.asgd_step, np.ones(3), np.ones(3),
             np.zeros(3), step=2, eta=0.01, mu=mu)


def test_every_state_array_must_be_writeable():
    """The second state read-only (the first is checked on its own path) is refused by name."""
    exp_avg_sq = np.zeros(3)
    exp_avg_sq.flags.writeable = False
    _refused(ValueError, "exp_avg_sq", F.adam_step, np.ones(3), np.ones(3), np.zeros(3),
             exp_avg_sq, step=1)


def test_adafactor_checks_the_variance_of_a_vector():
    """A 1-D param keeps a full second moment: it is required and shaped like the param,
    whatever the factored arguments (None) say before it."""
    _refused(ValueError, r"variance is required for a param of shape \(4,\)", F.adafactor_step,
             np.ones(4), np.ones(4), step=1)
    _refused(ValueError, "variance has shape", F.adafactor_step, np.ones(4), np.ones(4),
             variance=np.zeros(3), step=1)


def test_muon_takes_up_to_99_newton_schulz_steps():
    """torch refuses 100 steps and more ("for computational efficiency"); 99 is allowed."""
    param, grad, buffer = np.ones((3, 2)), np.full((3, 2), 0.5), np.zeros((3, 2))
    _refused(ValueError, "ns_steps", F.muon_step, param, grad, buffer, ns_steps=100)
    F.muon_step(param, grad, buffer, ns_steps=99, ns_dtype=None)
    assert np.all(np.isfinite(param)) and not np.all(param == 1)
    nopt.Muon([np.ones((3, 2))], ns_steps=99)


@pytest.mark.parametrize("step_sizes, match", [((-1e-6, 50), r"step_sizes\[0\]"),
                                               ((1e-6, -50), r"step_sizes\[1\]"),
                                               ((60, 50), "step_size_min <= step_size_max")])
def test_rprop_step_sizes_are_checked_each(step_sizes, match):
    arrays = (np.ones(3), np.ones(3), np.zeros(3), np.zeros(3))
    _refused(ValueError, match, F.rprop_step, *arrays, step=1, step_sizes=step_sizes)
