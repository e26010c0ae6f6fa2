"""Headless kernels forked from a process that has already imported the heavy libraries.

Why: every notebook run starts a fresh kernel, and a fresh kernel spends 6-8 s of CPU on 2
cores importing torch and transformers (which import peft, bitsandbytes, torch's compiler)
before the notebook does any work of its own. `make run-all` starts 15 kernels, `make test`
about 45. Here a *kernel server*, started once per runner process, imports those libraries and
then forks one child per kernel: the child finds them imported (its memory is a copy-on-write
copy of the server's) and starts in well under a second. Each kernel is still a process of its
own, with its own state, environment, working folder and process group; a notebook sees nothing
another one ran, and the server never runs a notebook's code.

What does not change: the kernel spec, the notebooks, the connection (jupyter_client writes the
connection file and talks to the kernel as always), interrupts and kills (signals to the
kernel's process group), and the exit code jupyter_client waits for, which the server reports.
JupyterLab (`make lab`) and the processes `accelerate launch` starts do not use it.

The rules that keep a forked kernel equal to a fresh one:
- The server imports only, never computes: torch's OpenMP thread pool, once used, does not
  survive a fork (the child's first parallel op waits forever), and the pool is only created on
  first use. `PRELOAD` is third-party modules only; nbutils is imported by the notebook itself.
- A library may read an environment variable when it is imported (huggingface_hub reads
  HF_HUB_OFFLINE, torch OMP_NUM_THREADS). So a server serves only kernels whose environment is
  its own, apart from the variables Jupyter sets for each kernel; another environment gets a
  server of its own.
- No CUDA in the server: a CUDA context does not survive a fork. A server whose imports
  initialised CUDA stops at once, as does one whose imports fail.
- Linux only (fork, and prctl so that a kernel dies with its server, as a fresh kernel dies with
  its runner). Elsewhere, with NBUTILS_WARM_KERNELS=0, or when a server cannot start, kernels
  start as jupyter_client starts them.
"""
from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

SWITCH = "NBUTILS_WARM_KERNELS"  # "0": start every kernel fresh
PRELOAD_VARIABLE = "NBUTILS_WARM_PRELOAD"  # modules to import instead of PRELOAD, comma-separated
# What the notebooks import that costs seconds: torch, transformers and what it pulls in with
# the Trainer (peft, bitsandbytes, torch's compiler), datasets (pyarrow), trl, scikit-learn,
# pandas. Not the kernel (ipykernel reads JPY_PARENT_PID when imported; 0.14 s) nor matplotlib
# (it picks its backend from MPLBACKEND when imported, which the kernel sets once it starts).
PRELOAD = ("torch", "transformers", "transformers.trainer", "transformers.trainer_seq2seq", "peft",
           "accelerate", "datasets", "trl", "sklearn.metrics", "pandas")
# Variables that may differ between the kernels of one server: set by jupyter_client for each
# kernel, by pytest for each test, and the hub token, which huggingface_hub reads at each call
# (utils/_auth.get_token), never when imported. The kernel gets them all, from its own request.
PER_KERNEL = ("JPY_PARENT_PID", "JPY_SESSION_NAME", "PYTEST_CURRENT_TEST", "HF_TOKEN")
MAX_SERVERS = 3  # per process: one per distinct environment, each holding ~1 GB of imports
START_TIMEOUT = 300.0
_PR_SET_PDEATHSIG = 1


class ForkedKernel:
    """What jupyter_client's local provisioner needs of a `subprocess.Popen`, for a kernel that
    is the server's child, not ours: signals go to its pid, its exit code comes from the server."""

    stdin = stdout = stderr = None

    def __init__(self, connection: socket.socket):
        self.returncode, self._connection, self._received = None, connection, b""
        line = self._line(timeout=None)
        if not line.startswith("pid "):
            raise RuntimeError("the kernel server closed the connection before forking")
        self.pid = int(line.split()[1])

    def _line(self, timeout: float | None) -> str | None:
        """The server's next line; "" when it closed the connection; None if none came within
        `timeout` seconds."""
        while b"\n" not in self._received:
            ready, _, _ = select.select([self._connection], [], [], timeout)
            if not ready:
                return None
            chunk = self._connection.recv(256)
            if not chunk:
                return ""
            self._received += chunk
        line, self._received = self._received.split(b"\n", 1)
        return line.decode()

    def _read_exit(self, timeout: float | None) -> None:
        line = self._line(timeout)
        if line is None:
            return
        # No line: the server died, and its kernels with it (prctl, see `_become_kernel`).
        self.returncode = int(line.split()[1]) if line.startswith("exit ") else -signal.SIGKILL
        self._connection.close()

    def poll(self) -> int | None:
        if self.returncode is None:
            self._read_exit(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._read_exit(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(f"kernel {self.pid}", timeout)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _Server:
    """A kernel server process, as seen from the runner: its socket, and the kernels it forked."""

    def __init__(self, python: list[str], env: dict[str, str], preload: tuple[str, ...]):
        self.folder = tempfile.mkdtemp(prefix="nbutils-kernels-")
        self.path = os.path.join(self.folder, "server.sock")
        # Its stdin is a pipe from this process: when this process ends, however it ends, the
        # server reads end-of-file and stops.
        self.process = subprocess.Popen(
            [*python, "-m", "nbutils.harness.warm_kernels", self.path, ",".join(preload)],
            env=env, stdin=subprocess.PIPE)
        self.kernels: list[ForkedKernel] = []

    def connect(self) -> socket.socket:
        deadline = time.time() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the kernel server exited with {self.process.returncode}")
            if os.path.exists(self.path):
                connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    connection.connect(self.path)
                    return connection
                except OSError:
                    connection.close()
            if time.time() > deadline:
                raise RuntimeError(f"the kernel server did not start within {START_TIMEOUT:.0f} s")
            time.sleep(0.05)

    def launch(self, arguments: list[str], env: dict[str, str], cwd: str) -> ForkedKernel:
        connection = self.connect()
        request = {"arguments": arguments, "env": env, "cwd": cwd}
        connection.sendall((json.dumps(request) + "\n").encode())
        kernel = ForkedKernel(connection)
        self.kernels.append(kernel)
        return kernel

    def busy(self) -> bool:
        """Does a kernel of this server still run? (Forgets those that have ended.)"""
        self.kernels = [k for k in self.kernels if k.poll() is None]
        return bool(self.kernels)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


_servers: dict[tuple, _Server] = {}
_failed: set[tuple] = set()  # environments whose server could not start: their kernels start fresh
_lock = threading.Lock()


def _signature(python: list[str], env: dict[str, str]) -> tuple:
    return tuple(python), tuple(sorted((k, v) for k, v in env.items() if k not in PER_KERNEL))


def serving() -> bool:
    """Has this process started a server (that its next kernels can be forked from)?"""
    return bool(_servers)


def enabled() -> bool:
    return sys.platform.startswith("linux") and os.environ.get(SWITCH, "1") != "0"


def split_kernel_command(command: list[str]) -> tuple[list[str], list[str]] | None:
    """(the Python command with its options, the kernel's arguments) of `python [options] -m
    ipykernel_launcher -f <file>`, the ipykernel spec's command; None for any other command."""
    if "-m" not in command:
        return None
    at = command.index("-m")
    if command[at + 1:at + 2] != ["ipykernel_launcher"] or not command[0].startswith("/"):
        return None
    return command[:at], command[at + 2:]


def launch(command: list[str], env: dict[str, str] | None, cwd: str | None) -> ForkedKernel | None:
    """Fork a kernel for `command` (a kernel spec's command line) from the server for `env`,
    starting that server if there is none yet. None when this kernel must start fresh: warm
    kernels are off, the command is not an ipykernel's, or the process already keeps
    `MAX_SERVERS` servers for other environments, all with a kernel running."""
    parts = split_kernel_command(command) if enabled() else None
    if parts is None:
        return None
    python, arguments = parts
    env = dict(os.environ if env is None else env)
    env["JPY_PARENT_PID"] = str(os.getpid())  # as jupyter_client's launcher sets it
    key = _signature(python, env)
    with _lock:
        if key in _failed:
            return None
        server = _servers.get(key)
        if server is None:
            if len(_servers) >= MAX_SERVERS:
                idle = next((k for k, s in _servers.items() if not s.busy()), None)
                if idle is None:
                    return None
                _servers.pop(idle).stop()
            preload = env.get(PRELOAD_VARIABLE)
            server = _servers[key] = _Server(python, env, tuple(preload.split(",")) if preload else PRELOAD)
    try:
        return server.launch(arguments, env, str(cwd or os.getcwd()))
    except (OSError, RuntimeError) as err:
        # A server that could not start (an import failed, or touched CUDA: see `serve`) or
        # answer: this kernel and the later ones of this environment start as usual.
        print(f"warm kernels: {err}; kernels start fresh", file=sys.stderr, flush=True)
        with _lock:
            _failed.add(key)
            if _servers.get(key) is server:
                _servers.pop(key).stop()
        return None


@atexit.register
def stop_servers() -> None:
    with _lock:
        while _servers:
            _servers.popitem()[1].stop()


# ---------------------------------------------------------------------------- the server side

def _die_with_parent() -> None:
    """Have the kernel receive SIGKILL when its server ends (Linux's prctl)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _become_kernel(request: dict, listener: socket.socket) -> None:
    """In the forked child: become the kernel a fresh `python -m ipykernel_launcher` would be,
    then exit; never return into the server's loop."""
    code = 1
    try:
        listener.close()
        os.setsid()  # a process group of its own, as jupyter_client gives a fresh kernel
        _die_with_parent()
        for signum in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        # The randomness a fresh process would start with (the notebooks seed their own).
        import random

        random.seed()
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        import ipykernel_launcher
        from ipykernel import kernelapp

        sys.argv = [ipykernel_launcher.__file__, *request["arguments"]]
        kernelapp.launch_new_instance(argv=request["arguments"])
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(path: str, preload: tuple[str, ...]) -> None:
    """Import `preload`, then fork a kernel for each request on the socket at `path`; report each
    kernel's exit code on its request's connection. Stops when stdin ends (the runner is gone),
    killing the kernels still running, as a fresh kernel stops when its runner is gone."""
    import importlib

    from nbutils import quiet

    # bitsandbytes logs `Failed to load CPU gemm_4bit_forward ...` when imported (on a CPU with
    # AVX512-BF16): here, before any notebook's set-up cell could filter it, once per server.
    # The filters go on first, as a notebook's set-up cell puts them before its own imports.
    quiet.install_filters()
    for name in preload:
        importlib.import_module(name)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        # A CUDA context does not survive a fork: a kernel forked from here could not use the
        # GPU. (bitsandbytes queries the GPUs when imported; torch.cuda.is_available alone does
        # not initialise CUDA.) The runner then starts its kernels fresh.
        sys.exit("importing the libraries initialised CUDA")
    # Python would otherwise find the server's own folder first on sys.path; a kernel starts
    # with the folder it runs in (ipykernel_launcher puts the working folder back).
    if sys.path and sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".tmp")
    os.rename(path + ".tmp", path)  # the runner connects only once the server listens
    listener.listen(16)
    kernels: dict[int, socket.socket] = {}
    while True:
        ready, _, _ = select.select([listener, sys.stdin], [], [], 0.1)
        while kernels:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if not pid:
                break
            connection = kernels.pop(pid)
            try:
                connection.sendall(f"exit {os.waitstatus_to_exitcode(status)}\n".encode())
            except OSError:
                pass
            connection.close()
        if sys.stdin in ready and not os.read(sys.stdin.fileno(), 4096):
            for pid in kernels:
                os.kill(pid, signal.SIGKILL)
            return
        if listener in ready:
            connection, _ = listener.accept()
            request = json.loads(connection.makefile().readline())
            pid = os.fork()
            if pid == 0:
                for other in kernels.values():
                    other.close()
                connection.close()
                _become_kernel(request, listener)
            kernels[pid] = connection
            connection.sendall(f"pid {pid}\n".encode())


if __name__ == "__main__":
    serve(sys.argv[1], tuple(name for name in sys.argv[2].split(",") if name))
    # Nothing left to write: skip the 2 s of tearing down torch and transformers on the way out.
    os._exit(0)
