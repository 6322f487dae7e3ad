"""Each optimizer's docstring ends with its constructor's arguments, their defaults (read from
the signature, so they cannot drift) and what each does: ``help(nopt.Adam)`` reads as a manual
page.  The meanings shared by several optimizers are here; a class states its own in
``param_docs`` (they win)."""
import inspect
import textwrap

SHARED = {
    "params": "the arrays to update in place: a list, a dict name -> array (grads then a dict "
              "with the same names), a list of group dicts {'params': [...], 'lr': ...} with "
              "per-group hyper-parameters, or a FlatParams",
    "lr": "learning rate (a number, or a 0-d array read at every step)",
    "betas": "(beta1, beta2): the decay rates of the first and second moment averages",
    "eps": "added to the denominator for numerical stability",
    "weight_decay": "L2 penalty: weight_decay * p is added to the gradient",
    "decoupled_weight_decay": "decay the params directly, p <- p*(1 - lr*weight_decay), before "
                              "the update (AdamW's form) instead of adding an L2 gradient term",
    "maximize": "ascend: the gradient is negated first",
    "device": "'auto' (the arrays decide: NumPy -> CPU kernels, CUDA arrays -> CUDA kernels), "
              "'cpu' or 'cuda'; never copies between host and device",
    "state_dtype": "dtype of the state buffers: None (the dtype the update computes in), "
                   "'float32', 'bfloat16', or 'int8' (blockwise 8-bit; params under 4096 "
                   "elements keep float32 state)",
    "master_weights": "keep a float32 copy of bfloat16/float16 params in the state and update "
                      "that (the params get its rounded value)",
    "stochastic_rounding": "round the values stored in bfloat16/float16 (params without master "
                           "weights, bfloat16 state) stochastically instead of to nearest, so "
                           "updates under half an ulp survive in expectation",
    "rounding_seed": "seed of the stochastic rounding (kept in the state_dict; default 0)",
    "stream": "CUDA: the stream every step's kernels run on (a numba, torch or CuPy stream, or "
              "a cudaStream_t int); default: the arrays' current stream (torch's or CuPy's), "
              "else the default stream",
    "momentum": "momentum factor (0: none)",
    "amsgrad": "use the running maximum of the second moment (AMSGrad)",
}


def arguments_section(cls):
    """The 'Arguments' text of ``cls``'s docstring: one line per constructor parameter."""
    meanings = {**SHARED, **getattr(cls, "param_docs", {})}
    lines = ["Arguments:"]
    for name, parameter in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        shown = name if parameter.default is parameter.empty else f"{name}={parameter.default!r}"
        meaning = meanings.get(name)
        lines.append(textwrap.fill(f"{shown}: {meaning}" if meaning else shown, width=92,
                                   initial_indent="    ", subsequent_indent="        "))
    return "\n".join(lines)


def document(cls):
    """Append the arguments section to ``cls``'s own docstring (which states the rule)."""
    doc = cls.__dict__.get("__doc__")
    if not doc:
        return  # a subclass without a docstring: help() shows its base's
    doc = inspect.cleandoc(doc)
    cls.__doc__ = f"{doc}\n\n{arguments_section(cls)}\n"


def undocumented(cls):
    """The constructor parameters of ``cls`` that have no meaning stated (for the tests)."""
    meanings = {**SHARED, **getattr(cls, "param_docs", {})}
    return [name for name in inspect.signature(cls.__init__).parameters
            if name != "self" and name not in meanings]
