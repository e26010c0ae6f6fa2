"""Warm kernels (nbutils.harness.warm_kernels): forked from a server that has imported the heavy
libraries, each still a kernel of its own, with its caller's environment and working folder,
reached by interrupts, reporting its exit code, and gone when its runner is gone.

The servers here preload `wave` (a small standard module no kernel imports by itself) instead of
torch and transformers, so that each server starts in a second. That the smoke projects give the
same records in warm and fresh kernels is checked by tests/notebooks/test_resume.py (its session
run is warm, its resumed run fresh) and by run-all's records (see the README)."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import nbformat
import papermill
import psutil
import pytest

from nbutils.harness import runner, warm_kernels

pytestmark = pytest.mark.slow  # starts kernels and servers

PROBE = """
import json, os, sys
from ipykernel.kernelapp import IPKernelApp
json.dump({"pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(),
           "preloaded": "wave" in sys.modules, "marker": os.environ.get("WARM_TEST_MARKER"),
           "token": os.environ.get("HF_TOKEN"),
           "parent_handle": IPKernelApp.instance().parent_handle}, open(OUT, "w"))
"""


@pytest.fixture
def light_servers(monkeypatch):
    monkeypatch.setenv(warm_kernels.PRELOAD_VARIABLE, "wave")
    monkeypatch.delenv(warm_kernels.SWITCH, raising=False)
    warm_kernels.stop_servers()
    warm_kernels._failed.clear()
    yield
    warm_kernels.stop_servers()
    warm_kernels._failed.clear()


def _probe(folder, name, warm=True) -> dict:
    out = folder / f"{name}.json"
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": runner.KERNEL, "language": "python",
                                                           "display_name": runner.KERNEL}})
    nb.cells = [nbformat.v4.new_code_cell(f"OUT = {str(out)!r}\n" + PROBE)]
    nbformat.write(nb, folder / f"{name}.ipynb")
    papermill.execute_notebook(str(folder / f"{name}.ipynb"), str(folder / f"{name}-out.ipynb"),
                               kernel_name=runner.KERNEL, cwd=str(folder), progress_bar=False,
                               kernel_manager_class=runner.headless_kernel_manager(warm=warm))
    return json.loads(out.read_text())


def _is_server(pid: int) -> bool:
    return "nbutils.harness.warm_kernels" in " ".join(psutil.Process(pid).cmdline())


def test_a_warm_kernel_is_forked_with_its_callers_environment_and_folder(light_servers, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv("WARM_TEST_MARKER", "first")
    first = _probe(tmp_path, "first")
    monkeypatch.setenv("HF_TOKEN", "hf_perKernelToken")  # read at each call, never at an import
    again = _probe(tmp_path, "again")
    assert _is_server(first["ppid"]) and again["ppid"] == first["ppid"], "not forked from one server"
    assert again["token"] == "hf_perKernelToken"
    assert first["preloaded"] and first["pid"] != again["pid"]
    assert first["cwd"] == str(tmp_path) and first["marker"] == "first"
    # The kernel watches this process, as a kernel jupyter_client starts itself does.
    assert first["parent_handle"] == os.getpid()

    # Another environment: a library may have read it when imported, so another server.
    monkeypatch.setenv("WARM_TEST_MARKER", "second")
    second = _probe(tmp_path, "second")
    assert second["marker"] == "second" and _is_server(second["ppid"]) and second["ppid"] != first["ppid"]

    # warm=False (a notebook that launches its own processes): jupyter_client's own kernel.
    fresh = _probe(tmp_path, "fresh", warm=False)
    assert fresh["ppid"] == os.getpid() and not fresh["preloaded"]
    monkeypatch.setenv(warm_kernels.SWITCH, "0")
    assert _probe(tmp_path, "switched_off")["ppid"] == os.getpid()


def test_a_server_that_cannot_start_leaves_its_kernels_to_start_fresh(light_servers, tmp_path,
                                                                     monkeypatch, capfd):
    """As when the preload fails, or touches CUDA (which no fork survives): the run goes on."""
    monkeypatch.setenv(warm_kernels.PRELOAD_VARIABLE, "no_such_module_here")
    first = _probe(tmp_path, "first")
    assert first["ppid"] == os.getpid() and not first["preloaded"]
    assert "warm kernels: the kernel server exited with 1; kernels start fresh" in capfd.readouterr().err
    assert _probe(tmp_path, "again")["ppid"] == os.getpid()  # no second try for this environment
    assert "warm kernels:" not in capfd.readouterr().err


async def _started_kernel(folder):
    manager = runner.headless_kernel_manager()(kernel_name=runner.KERNEL)
    await manager.start_kernel(cwd=str(folder))
    client = manager.client()
    client.start_channels()
    await client.wait_for_ready(timeout=60)
    assert _is_server(psutil.Process(manager.provisioner.pid).ppid())
    return manager, client


def test_an_interrupt_reaches_a_warm_kernels_running_cell(light_servers, tmp_path):
    async def scenario():
        manager, client = await _started_kernel(tmp_path)
        try:
            running = client.execute("import time; time.sleep(60)")
            while True:  # interrupt once the cell runs, not before (a loaded machine is slow)
                message = await client.get_iopub_msg(timeout=60)
                if (message["msg_type"] == "execute_input"
                        and message["parent_header"].get("msg_id") == running):
                    break
            await asyncio.sleep(0.5)
            await manager.interrupt_kernel()
            reply = await client.get_shell_msg(timeout=20)
            assert reply["content"]["ename"] == "KeyboardInterrupt"
        finally:
            client.stop_channels()
            await manager.shutdown_kernel(now=True)

    asyncio.run(scenario())


def test_a_warm_kernels_exit_code_reaches_its_manager(light_servers, tmp_path):
    async def scenario():
        manager, client = await _started_kernel(tmp_path)
        try:
            client.execute("import os; os._exit(3)")
            deadline = time.time() + 60
            while await manager.is_alive():
                assert time.time() < deadline, "the kernel did not exit"
                await asyncio.sleep(0.1)
            assert manager.provisioner.process.returncode == 3
        finally:
            client.stop_channels()
            await manager.shutdown_kernel(now=True)

    asyncio.run(scenario())


RUNNER = """
import asyncio, time
from nbutils.harness import runner
async def main():
    manager = runner.headless_kernel_manager()(kernel_name=runner.KERNEL)
    await manager.start_kernel()
    print(manager.provisioner.pid, flush=True)
    time.sleep(300)
asyncio.run(main())
"""


def test_a_warm_kernel_ends_when_its_runner_is_killed(light_servers, tmp_path):
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    kernel = psutil.Process(int(process.stdout.readline()))
    server = psutil.Process(kernel.ppid())
    assert _is_server(server.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    gone, alive = psutil.wait_procs([kernel, server], timeout=20)
    assert not alive, f"still running after their runner was killed: {alive}"


def test_only_an_ipykernel_command_is_forked(monkeypatch):
    python = [sys.executable, "-Xfrozen_modules=off"]
    assert warm_kernels.split_kernel_command([*python, "-m", "ipykernel_launcher", "-f", "c.json"]) == (
        python, ["-f", "c.json"])
    assert warm_kernels.split_kernel_command(["R", "--slave", "-f", "c.json"]) is None
    assert warm_kernels.split_kernel_command(["python", "-m", "ipykernel_launcher", "-f", "c.json"]) is None
    monkeypatch.setenv(warm_kernels.SWITCH, "0")
    assert warm_kernels.launch([*python, "-m", "ipykernel_launcher", "-f", "c.json"], None, None) is None


def test_a_notebook_that_launches_its_own_processes_gets_a_fresh_kernel():
    assert runner.launches_processes({"num_processes": 2})
    assert not runner.launches_processes({"num_processes": 1}) and not runner.launches_processes({})


def test_a_known_noise_line_logged_by_a_preloaded_import_is_filtered(tmp_path):
    """bitsandbytes logs `Failed to load CPU gemm_4bit_forward ...` when imported (on a CPU
    with AVX512-BF16); the server imports it before any notebook's set-up cell filters it, so
    each run-all worker's server printed it into the console. Here a stand-in module logs it."""
    from nbutils import quiet

    (tmp_path / "noisy_import.py").write_text(
        "import logging\n"
        f"logging.getLogger('bitsandbytes.backends.cpu.ops').warning({quiet.BITSANDBYTES_KERNEL + ': no kernels'!r})\n"
        "logging.getLogger('bitsandbytes.backends.cpu.ops').warning('another warning')\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "nbutils.harness.warm_kernels", str(tmp_path / "server.sock"),
                           "noisy_import"], stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "another warning" in done.stderr and "gemm_4bit_forward" not in done.stderr
