"""A warm pytest for mutation runs: the heavy imports (torch ~3-10 s, numba ~2 s) once, then a
fork per test run.

    python warm.py serve SOCKET MODULE...    import the MODULEs, then serve until killed
    python warm.py run SOCKET PYTEST_ARG...  one pytest run in a fresh fork of the server

The server never imports numba_opt nor the tests, so each forked child imports them from disk:
the mutant cosmic-ray just wrote, with no state left over from the last one (a fork is a clean
copy of the warm server).  ``run`` streams the child's output and exits with its status, as a
plain ``python -m pytest`` would; a child still running after MUTATION_TIMEOUT seconds
(default 120) is killed by an alarm, so a mutant that loops forever fails rather than hangs.
"""
import os
import socket
import sys

_END = b"\0exit="


def serve(path, modules):
    import contextlib
    import importlib
    import io
    import signal
    for name in modules:
        importlib.import_module(name)
    import pytest
    # load pytest's plugins (hypothesis's among them) here too, not once per child
    with contextlib.redirect_stdout(io.StringIO()):
        pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", os.devnull])
    sys.dont_write_bytecode = True  # a mutant may keep its original's size and mtime second
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    timeout = int(os.environ.get("MUTATION_TIMEOUT", "120"))
    if os.path.exists(path):
        os.unlink(path)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    while True:
        conn, _ = server.accept()
        with conn:
            args = conn.makefile("rb").readline().decode().rstrip("\n").split("\0")
            pid = os.fork()
            if pid == 0:  # the child: one pytest run, its output into the connection
                server.close()
                signal.alarm(timeout)
                os.dup2(conn.fileno(), 1)
                os.dup2(conn.fileno(), 2)
                try:
                    code = int(pytest.main(args))
                except BaseException:  # noqa: BLE001  (any crash is a failed run)
                    code = 3
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            try:
                conn.sendall(_END + str(code if code >= 0 else 128 - code).encode())
            except OSError:  # the client is gone (cosmic-ray's timeout killed it)
                pass


def run(path, args):
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    client.sendall("\0".join(args).encode() + b"\n")
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    output, _, code = data.rpartition(_END)
    sys.stdout.write(output.decode(errors="replace"))
    return int(code) if code else 2


if __name__ == "__main__":
    command, path, *rest = sys.argv[1:]
    if command == "serve":
        serve(path, rest)
    else:
        sys.exit(run(path, rest))
