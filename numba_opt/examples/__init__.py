"""Worked examples behind ``python -m numba_opt demo|plot``: a NumPy MLP trained with every
optimizer (``mlp``) and optimizer paths on classic 2-D test functions (``trajectories``)."""
