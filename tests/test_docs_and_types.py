"""help(nopt.Adam) reads as a manual page, and the public API carries type hints (PEP 561)."""
import inspect
import pathlib
import tomllib
import typing

import pytest

import numba_opt as nopt
from numba_opt import checkpoint, functional, lr_scheduler
from numba_opt.optim import _docs

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLASSES = [getattr(nopt, name) for name in nopt.optim.__all__ if name != "Optimizer"]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_each_docstring_states_every_argument_its_default_and_the_rule(cls):
    doc = inspect.getdoc(cls)
    assert not _docs.undocumented(cls), "give their meaning in param_docs or _docs.SHARED"
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name == "self":
            continue
        shown = name if parameter.default is parameter.empty else f"{name}={parameter.default!r}"
        assert f"    {shown}: " in doc, shown
    assert "<-" in doc  # the update rule, before the arguments
    assert doc.index("<-") < doc.index("Arguments:")


def test_py_typed_ships_with_the_package():
    assert (ROOT / "numba_opt" / "py.typed").exists()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in config["tool"]["setuptools"]["package-data"]["numba_opt"]


def hinted(function, localns=None):
    hints = typing.get_type_hints(function, localns=localns)
    parameters = [n for n in inspect.signature(function).parameters if n != "self"]
    missing = [n for n in parameters if n not in hints]
    assert not missing, (function.__qualname__, missing)
    assert "return" in hints, function.__qualname__


def test_the_public_api_has_type_hints():
    names = {"Optimizer": nopt.Optimizer}
    for cls in CLASSES:
        hinted(cls.__init__)
    for method in ("__init__", "step", "state_dict", "load_state_dict", "add_param_group"):
        hinted(getattr(nopt.Optimizer, method))
    hinted(nopt.FlatParams.__init__, {"Array": typing.Any})
    hinted(checkpoint.save, names)
    hinted(checkpoint.load, names)
    for name in dir(functional):
        if name.endswith("_step") and not name.startswith("_"):
            hinted(getattr(functional, name))
    for name in dir(lr_scheduler):
        cls = getattr(lr_scheduler, name)
        if isinstance(cls, type) and not name.startswith("_") and "__init__" in vars(cls):
            hinted(cls.__init__, names)
