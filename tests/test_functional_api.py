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
