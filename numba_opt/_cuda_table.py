"""Multi-tensor launches on the GPU: one kernel launch per bucket of separate device arrays.

The GPU twin of ``_cpu``'s table loop.  A ``DeviceTable`` holds, on the device, where each of a
bucket's arrays starts in the bucket's elements (``starts``, n + 1 entries) and a table of the
params' data addresses; the grads' addresses go into a second table, uploaded (on the step's
stream, from pinned memory, no host sync) only when they differ from the last step's -- torch's
caching allocator and reused grad buffers keep them the same.  The kernels grid-stride over the
bucket's elements ``i``; a thread finds the array holding ``i`` by binary search over
``starts`` when it leaves its current array, and builds views of it from its address
(``_tensor``).  The state buffers are the bucket's flat buffers, sliced at the array's start.

The simulator cannot read memory by address: there a table is a tuple of the arrays and
``_tensor`` is ``table[t]``; the lookup, slicing and striding code is the same one.
"""
import numpy as np
from numba import config, cuda

from . import _cuda_launch, _math, _quant

_SIMULATED = bool(config.ENABLE_CUDASIM)


if _SIMULATED:
    def tensor(table, t, like, n):
        return table[t]
else:
    from numba.cuda import types as _types
    from numba.cuda.extending import intrinsic

    @intrinsic
    def tensor(typingctx, table, t, like, n):
        """A 1-D C array of ``like``'s dtype and ``n`` elements at the address ``table[t]``
        (an int64 device array of addresses)."""
        array_type = _types.Array(like.dtype, 1, "C")

        def codegen(context, builder, signature, args):
            from numba.cuda import cgutils
            from numba.cuda.np.arrayobj import make_array, populate_array
            table_type = signature.args[0]
            addresses = make_array(table_type)(context, builder, args[0])
            address = builder.load(cgutils.get_item_pointer(context, builder, table_type,
                                                            addresses, [args[1]]))
            data = builder.inttoptr(address, context.get_value_type(
                _types.CPointer(like.dtype)))
            view = make_array(array_type)(context, builder)
            itemsize = context.get_constant(_types.intp, context.get_abi_sizeof(
                context.get_data_type(like.dtype)))
            populate_array(view, data=data, shape=[args[3]], strides=[itemsize],
                           itemsize=itemsize, meminfo=None)
            return view._getvalue()
        return array_type(table, t, like, n), codegen


def lookup(starts, i):
    """The array holding bucket element ``i``: the last t with starts[t] <= i (empty arrays
    share their start with the next one and are passed over)."""
    lo, hi = 0, starts.size - 1
    while hi - lo > 1:
        middle = (lo + hi) // 2
        if starts[middle] <= i:
            lo = middle
        else:
            hi = middle
    return lo


if not _SIMULATED:  # the simulator runs kernels as Python, which call Python functions
    lookup = _math._rule(lookup)


WITH = _math.WITH_FOUR  # an applier of 0-4 buffers, called with four


def update_kernel(apply_with4, rescaled):
    """The table kernel of one update variant: ``apply_with4`` its applier over four buffers,
    ``rescaled(h, s)`` its scalars with the grad scale multiplied by the device clip scale."""
    @cuda.jit
    def kernel(param_table, grad_table, starts, offsets, like, s0, s1, s2, s3, scale, h):
        h = rescaled(h, scale[0])
        n = starts[starts.size - 1]
        t = 0
        lo = hi = starts[0]  # the current array's elements [lo, hi): none yet
        at = lo  # where the current array's state starts in the state buffers
        for i in range(cuda.grid(1), n, cuda.gridsize(1)):
            if i >= hi:
                t = lookup(starts, i)
                lo, hi, at = starts[t], starts[t + 1], offsets[t]
            size = hi - lo
            apply_with4(i - lo, tensor(param_table, t, like, size),
                        tensor(grad_table, t, like, size), s0[at:], s1[at:], s2[at:], s3[at:], h)
    return kernel


def _address(array):
    return array.__cuda_array_interface__["data"][0] if array.size else 0


def _host_view(array):
    """What a simulated table holds: the NumPy array behind a simulated device array."""
    return getattr(array, "_ary", array)


class DeviceTable:
    """The device tables of one bucket of separate arrays (``flat_params``, 1-D, as the
    kernels take them), made once; ``grads_table`` gives the table of each step's grads.

    ``subset_of`` (the bucket's own table) and ``positions`` (the arrays' indices in it) make
    the table of some of the bucket's arrays, stepped together while others wait (their grads
    None): their state is where the bucket's table has it (``offsets``, ``block_offsets``)."""

    def __init__(self, flat_params, subset_of=None, positions=None):
        sizes = [a.size for a in flat_params]
        starts = np.zeros(len(sizes) + 1, np.int64)
        np.cumsum(sizes, out=starts[1:])
        self.size = int(starts[-1])
        self.count = len(sizes)
        self.starts = cuda.to_device(starts)
        self.like = cuda.device_array(0, flat_params[0].dtype)  # the kernels' param dtype
        self._sizes, self._block_starts = sizes, None
        if subset_of is None:  # the state of array t starts where its elements do
            self.offsets, self._block_offsets = self.starts, None
        else:
            self.offsets = cuda.to_device(subset_of.host_starts[positions])
            self._block_offsets = cuda.to_device(subset_of.host_block_starts()[positions])
        self.host_starts = starts
        if _SIMULATED:
            self.params = tuple(_host_view(a) for a in flat_params)
        else:
            self.params = cuda.to_device(np.array([_address(a) for a in flat_params], np.int64))
            self._grads = cuda.device_array(self.count, np.int64)
            # two pinned staging tables, each reused once its last upload is done
            self._staging = [cuda.pinned_array(self.count, np.int64) for _ in range(2)]
            self._uploaded = [None, None]
            self._turn = 0
        self._grad_addresses = self._last_grads = self._grads_now = None
        self.uploads = 0  # grad tables uploaded (tests)

    def host_block_starts(self):
        """Where each array starts in the table's int8 absmax blocks (n + 1 entries): an
        array's blocks are its own, the last one possibly short."""
        starts = np.zeros(self.count + 1, np.int64)
        np.cumsum([_quant.blocks(size) for size in self._sizes], out=starts[1:])
        return starts

    def block_starts(self):
        """``host_block_starts`` on the device (made on first use)."""
        if self._block_starts is None:
            self._block_starts = cuda.to_device(self.host_block_starts())
        return self._block_starts

    def block_offsets(self):
        """Where each array's absmax blocks start in the bucket's scales."""
        return self.block_starts() if self._block_offsets is None else self._block_offsets

    def grads_table(self, all_grads, members):
        """The table of the grads ``all_grads[members]`` (1-D, as the kernels take them),
        uploaded only if their addresses changed; ``all_grads`` the same list as last time is
        the same table."""
        if all_grads is self._last_grads:
            return self._grads_now
        flat_grads = [all_grads[i] for i in members]
        if _SIMULATED:
            addresses = tuple(map(id, flat_grads))
            if addresses != self._grad_addresses:
                self._grad_addresses, self.uploads = addresses, self.uploads + 1
            self._grads_now = tuple(_host_view(g) for g in flat_grads)
        else:
            addresses = [_address(g) for g in flat_grads]
            if addresses != self._grad_addresses:
                self._upload(addresses)
            self._grads_now = self._grads
        self._last_grads = all_grads
        return self._grads_now

    def _upload(self, addresses):
        turn = self._turn
        staging, done = self._staging[turn], self._uploaded[turn]
        if done is not None and not done.query():  # an upload of two changes ago, still queued
            done.synchronize()
        staging[:] = addresses
        stream = _cuda_launch.current_stream()
        self._grads.copy_to_device(staging, stream=stream)
        if done is None:
            done = self._uploaded[turn] = cuda.event(timing=False)
        done.record(stream=stream)
        self._turn, self._grad_addresses = 1 - turn, addresses
        self.uploads += 1
