"""The one list of optimizer names that ``numba-opt demo``, ``plot`` and ``bench`` (and the
pyperf suite) accept, each with its numba_opt class and its settings per use.

A name is a class (the same name in torch.optim, where torch has it) plus the options that make
the variant (``Momentum`` is SGD with momentum=0.9); each use adds what suits its problem: the
digits MLP (``demo``), the 2-D test functions (``plot``: the lr is scaled per function), one
step on a large array (``bench``).  Adding an optimizer is one line in ``OPTIMIZERS``.
"""
from typing import Any, NamedTuple

import numba_opt as nopt

USES = ("demo", "plot", "bench")


class Entry(NamedTuple):
    cls: str                  # the numba_opt class (and torch.optim's, where torch has it)
    variant: dict             # the options that make this variant, in every use
    demo: dict                # the digits MLP's settings
    plot: dict                # the 2-D paths' settings (lr times each function's scale)
    bench: dict = {"lr": 1e-3}  # one step on large arrays


OPTIMIZERS = {
    "SGD": Entry("SGD", {}, dict(lr=0.1), dict(lr=1e-3)),
    "Momentum": Entry("SGD", dict(momentum=0.9), dict(lr=0.05), dict(lr=1e-3)),
    "Nesterov": Entry("SGD", dict(momentum=0.9, nesterov=True), dict(lr=0.05), dict(lr=1e-3)),
    "RMSprop": Entry("RMSprop", {}, dict(lr=1e-3), dict(lr=1e-2)),
    "RMSprop centered": Entry("RMSprop", dict(centered=True, momentum=0.5), dict(lr=1e-3),
                              dict(lr=1e-2)),
    "Adam": Entry("Adam", {}, dict(lr=3e-3), dict(lr=3e-2)),
    "Adam amsgrad": Entry("Adam", dict(amsgrad=True), dict(lr=3e-3), dict(lr=3e-2)),
    "AdamW": Entry("AdamW", {}, dict(lr=3e-3, weight_decay=1e-2),
                   dict(lr=3e-2, weight_decay=0.1)),
    "Adagrad": Entry("Adagrad", {}, dict(lr=3e-2), dict(lr=0.3)),
    "Adamax": Entry("Adamax", {}, dict(lr=6e-3), dict(lr=3e-2)),
    "RAdam": Entry("RAdam", {}, dict(lr=1e-2), dict(lr=3e-2)),
    "NAdam": Entry("NAdam", {}, dict(lr=3e-3), dict(lr=3e-2)),
    "Adadelta": Entry("Adadelta", {}, dict(lr=1.0), dict(lr=1.0), dict(lr=1.0)),
    "Rprop": Entry("Rprop", {}, dict(lr=1e-3), dict(lr=1e-2)),
    "ASGD": Entry("ASGD", {}, dict(lr=0.1, t0=100.0), dict(lr=1e-3)),
    "Adafactor": Entry("Adafactor", {}, dict(lr=3e-2), dict(lr=3e-2)),
    "Lion": Entry("Lion", {}, dict(lr=1e-3, weight_decay=0.1), dict(lr=1e-2), dict(lr=1e-4)),
}

# what each subcommand runs when no --optimizer is given
DEFAULTS = {"demo": ["SGD", "Momentum", "RMSprop", "Adam", "AdamW"],
            "plot": ["SGD", "Momentum", "RMSprop", "Adam", "AdamW", "Adagrad"],
            "bench": ["Adam"]}


def class_of(name: str) -> type:
    """The numba_opt optimizer class behind ``name``."""
    return getattr(nopt, OPTIMIZERS[name].cls)


def settings(name: str, use: str) -> dict[str, Any]:
    """The constructor keywords of ``name`` for ``use`` ('demo', 'plot' or 'bench')."""
    if use not in USES:
        raise ValueError(f"use must be one of {USES}, got {use!r}")
    entry = OPTIMIZERS[name]
    return {**entry.variant, **getattr(entry, use)}

