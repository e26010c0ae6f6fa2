"""Benchmark of the text-to-pandas sandbox: executions per second on short snippets, and what
each layer costs, in one run.

    python -m tools.bench_sandbox --out outputs/bench/sandbox.json [--old GIT_REVISION]

- `executions_per_s`: snippets through `Sandbox(workers=2).run`, all layers on (the figure the
  issue asks to keep at or above 100/s on 2 cores); `cpu_bound_per_s`: the same from the CPU
  time all processes spent per snippet (what 2 otherwise idle cores sustain). With `--old REV` the
  same snippets also go through the sandbox of that git revision (its whole `nbutils` package,
  taken with `git archive`, in a subprocess), between two rounds of the current one, in the same
  run, for a fair ratio (`make bench-sandbox OLD=9993e08`).
- `check_ms_16kb`: the static check (parse + allowlist) of a snippet at the size cap, 16 kB of
  honest-looking pandas, in this process (in the sandbox it runs in the jailed child).
- `layers_ms`: the time of each layer for one snippet, measured in a process shaped like the
  worker (pandas imported and warmed up): the static check; the fresh process (fork and reap);
  each step of the jail (fds, uid drop when root, rlimits, seccomp), timed inside the child; and
  the snippet itself (its check subtracted). `layers_share` divides each by their sum.
Timings on a shared machine vary; compare the figures of one run with each other.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

SNIPPETS = ["df['points'].sum()", "df[df['points'] > 8]['name']", "df.groupby('team')['points'].mean()",
            "df.sort_values('points', ascending=False).head(2)['name']", "df['team'].value_counts()",
            "df.loc[df['points'].idxmax(), 'name']"]
TABLE = {"df": {"columns": ["name", "team", "points"],
                "rows": [["Ann", "red", 10], ["Bob", "red", 25], ["Cid", "blue", 7], ["Dee", "blue", 31]]}}


def _cpu_seconds() -> float:
    """CPU time of this process and of every descendant it (or they) waited for: the workers,
    once closed, and the children they reaped."""
    import resource

    own, waited = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + waited.ru_utime + waited.ru_stime


def _sandbox_round(module, runs: int, workers: int):
    snippets = [SNIPPETS[i % len(SNIPPETS)] for i in range(runs)]
    cpu = _cpu_seconds()
    with module.Sandbox(timeout=2.0, memory_mb=512, workers=workers) as box:
        box.map(lambda code: box.run(code, TABLE), SNIPPETS[: 2 * workers])  # workers started, warm
        start = time.perf_counter()
        results = box.map(lambda code: box.run(code, TABLE), snippets)
        elapsed = time.perf_counter() - start
    return elapsed, _cpu_seconds() - cpu, sum(r.status != "ok" for r in results)


def executions_per_s(module, runs: int, workers: int = 2) -> dict:
    """Snippets per second through `module.Sandbox(workers=...)`, after a warm-up round: by the
    wall clock, and bounded by CPU time (all processes' CPU seconds per snippet, the workers'
    start-up subtracted by a round without snippets): `cpu_bound_per_s` is what `workers` cores
    doing nothing else would sustain, a figure that a busy machine disturbs far less."""
    elapsed, cpu, failed = _sandbox_round(module, runs, workers)
    _, cpu_empty, _ = _sandbox_round(module, 0, workers)
    cpu_per_run = max(cpu - cpu_empty, 1e-9) / runs
    return {"runs": runs, "workers": workers, "seconds": round(elapsed, 3),
            "executions_per_s": round(runs / elapsed, 1), "failed": failed,
            "cpu_ms_per_execution": round(cpu_per_run * 1000, 3),
            "cpu_bound_per_s": round(workers / cpu_per_run, 1)}


def _one_child(code, frames, rules, jailed: bool, vm_bytes=None) -> tuple[float, dict]:
    """Fork -> [jail, timing each layer] -> check and run one snippet -> reply -> reap: (wall ms,
    layer ms)."""
    from nbutils.sandbox import code_exec, jail as sandbox_jail

    start = time.perf_counter()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            timings = {}
            if jailed:
                sandbox_jail.jail(write_fd, 2.0, 512, rules, vm_bytes, timings=timings)
                write_fd = 3
            outcome = code_exec._child_run(code, TABLE, frames)
            os.write(write_fd, json.dumps({"outcome": outcome, "timings": timings}).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 1 << 16):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    wall = (time.perf_counter() - start) * 1000
    reply = json.loads(b"".join(chunks))
    assert reply["outcome"]["status"] == "ok", reply
    return wall, {k: v * 1000 for k, v in reply["timings"].items()}


def snippet_at_the_cap() -> str:
    """16 kB of honest-looking pandas: the sample snippets, each as a line `rN = ...`, repeated up
    to the size cap, ending in a value."""
    from nbutils.sandbox.allowlist import MAX_CODE_CHARS

    lines, size, i = [], 0, 0
    while size + len(f"r{i} = {SNIPPETS[i % len(SNIPPETS)]}") + 1 + len(f"r{i}") <= MAX_CODE_CHARS:
        lines.append(f"r{i} = {SNIPPETS[i % len(SNIPPETS)]}")
        size += len(lines[-1]) + 1
        i += 1
    return "\n".join(lines + [f"r{i - 1}"])


def check_time_at_the_cap(repeats: int) -> dict:
    """The static check's time on a snippet at the size cap (median of `repeats`)."""
    from nbutils.sandbox import code_exec

    code = snippet_at_the_cap()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        code_exec.check_code(code, TABLE)
        times.append((time.perf_counter() - t0) * 1000)
    return {"chars": len(code), "ms_median": round(statistics.median(times), 2), "ms_max": round(max(times), 2)}


def layer_costs(repeats: int) -> dict:
    """What each layer adds to one snippet, in ms and as a share of the whole.

    The jail's layers are timed inside the child (perf_counter around each), which the machine's
    load disturbs far less than differences of wall times; the fresh process is the wall time of
    an unjailed fork -> snippet -> reap minus the same snippet run in this process. Jailed and
    unjailed children alternate, so drift hits both alike."""
    from nbutils.sandbox import code_exec, jail as sandbox_jail

    sys.modules.setdefault("pyarrow", None)
    import pandas as pd

    pd.set_option("mode.string_storage", "python")
    code_exec.preload()
    rules = sandbox_jail.build_filter()
    start = time.perf_counter()
    for _ in range(repeats * 10):
        for code in SNIPPETS:
            code_exec.check_code(code, TABLE)
    static_ms = (time.perf_counter() - start) * 1000 / (repeats * 10 * len(SNIPPETS))
    frames = code_exec._frames(TABLE)
    in_process, check_first = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        code_exec.check_code(SNIPPETS[0], TABLE)
        t1 = time.perf_counter()
        code_exec._serialized(code_exec._child_run(SNIPPETS[0], TABLE, frames))  # check included
        in_process.append((time.perf_counter() - t1) * 1000)
        check_first.append((t1 - t0) * 1000)
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__  # _child_run discards prints
    bare, jailed, layers = [], [], {}
    for _ in range(repeats):
        bare.append(_one_child(SNIPPETS[0], frames, rules, jailed=False)[0])
        wall, timings = _one_child(SNIPPETS[0], frames, rules, jailed=True,
                                   vm_bytes=code_exec._worker_vm_bytes())  # as the worker does
        jailed.append(wall)
        for name, ms in timings.items():
            layers.setdefault(name, []).append(ms)
    snippet_ms = statistics.median(in_process)
    costs = {"static check": static_ms,
             "fresh process (fork + reap)": statistics.median(bare) - snippet_ms,
             **{f"jail: {name}": statistics.median(values) for name, values in layers.items()},
             "the snippet itself": snippet_ms - statistics.median(check_first)}
    total = sum(costs.values())
    return {"layers_ms": {k: round(v, 3) for k, v in costs.items()},
            "layers_share": {k: round(v / total, 3) for k, v in costs.items()},
            "one_snippet_ms": round(total, 3),
            "wall_ms_median": {"unjailed child": round(statistics.median(bare), 3),
                               "jailed child": round(statistics.median(jailed), 3)}}


def _old_executions_per_s(revision: str, runs: int) -> dict:
    """`executions_per_s` of the sandbox of git `revision`: its `nbutils` package, extracted to a
    temporary folder, first on sys.path of a subprocess (the workers it starts boot from the same
    folder); this file's function measures it."""
    import subprocess
    import tempfile

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="bench-old-") as folder:
        os.chmod(folder, 0o755)  # its workers' children run as nobody
        archive = subprocess.run(["git", "-C", str(root), "archive", revision, "nbutils"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
        # The sandbox moved from nbutils.tasks.text_to_pandas to nbutils.sandbox: either is found.
        script = (f"import sys, json, importlib, importlib.util; sys.path.insert(0, {folder!r}); "
                  f"spec = importlib.util.spec_from_file_location('bench', {__file__!r}); "
                  "bench = importlib.util.module_from_spec(spec); spec.loader.exec_module(bench); "
                  "code_exec = importlib.import_module('nbutils.sandbox.code_exec' if importlib.util.find_spec("
                  "'nbutils.sandbox') else 'nbutils.tasks.text_to_pandas.code_exec'); "
                  f"assert code_exec.__file__.startswith({folder!r}), code_exec.__file__; "
                  f"print(json.dumps(bench.executions_per_s(code_exec, {runs})))")
        out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench/sandbox.json")
    parser.add_argument("--runs", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--old", help="a git revision whose sandbox to measure in the same run")
    args = parser.parse_args(argv)
    from nbutils.sandbox import code_exec

    result = {"cpus": os.cpu_count(), "root": os.geteuid() == 0,
              "load_average_before": os.getloadavg()[0]}
    result["new"] = executions_per_s(code_exec, args.runs)
    with code_exec.Sandbox(workers=1) as box:
        result["containment"] = box.containment
    if args.old:
        result["old"] = {"revision": args.old, **_old_executions_per_s(args.old, args.runs)}
        result["new_again"] = executions_per_s(code_exec, args.runs)  # old in between: drift shows
        for key in ("executions_per_s", "cpu_bound_per_s"):
            result[f"new_over_old_{key}"] = round(
                statistics.mean([result["new"][key], result["new_again"][key]]) / result["old"][key], 3)
    result.update(layer_costs(args.repeats))
    result["check_ms_16kb"] = check_time_at_the_cap(args.repeats)
    result["load_average_after"] = os.getloadavg()[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
