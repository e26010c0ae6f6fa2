"""Compare the run records of two output folders: the same projects, the same numbers?

    python -m tools.compare_records outputs-before/smoke outputs/smoke

Every `metrics.json` under the first folder is compared with the one at the same place under the
second, field by field. What differs between two runs of the same code by nature is left out:
timings and throughput, the creation time, the git commit, worker ids of a search, library
versions. `--ignore KEY` leaves out more keys, where a change means to change them (e.g.
`memory_estimate` when the estimate itself was changed). Exit status 0 where every record
matches, 1 otherwise (each difference printed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from nbutils.run.record import RECORD_FILE

# Keys whose values differ from run to run of the same code (at any depth).
VARYING = {"runtime_s", "samples_per_s", "tokens_per_s", "created", "git", "versions", "worker",
           "workers", "seconds", "wall_s", "train_runtime", "train_samples_per_second",
           "train_steps_per_second", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second",
           "datetime_start", "datetime_complete", "duration_s", "stacker_seconds"}


def differences(a, b, path: str = "", tolerance: float = 0.0, ignore: frozenset = frozenset()) -> list[str]:
    """Where two JSON values differ (floats within `tolerance`), `VARYING` and `ignore` keys left out."""
    if isinstance(a, dict) and isinstance(b, dict):
        found = []
        for key in sorted(set(a) | set(b)):
            if key in VARYING or key in ignore:
                continue
            if key not in a or key not in b:
                found.append(f"{path}/{key}: only in {'second' if key in b else 'first'}")
            else:
                found += differences(a[key], b[key], f"{path}/{key}", tolerance, ignore)
        return found
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items against {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b))
                for d in differences(x, y, f"{path}[{i}]", tolerance, ignore)]
    if isinstance(a, float) and isinstance(b, float):
        same = (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tolerance
        return [] if same else [f"{path}: {a!r} against {b!r}"]
    return [] if a == b else [f"{path}: {a!r} against {b!r}"]


def compare(first: Path, second: Path, tolerance: float = 0.0, ignore=()) -> dict[str, list[str]]:
    """{record path relative to `first`: its differences}, for every record under `first`."""
    report = {}
    for path in sorted(first.rglob(RECORD_FILE)):
        relative = path.relative_to(first)
        other = second / relative
        if not other.is_file():
            report[str(relative)] = ["missing in the second folder"]
            continue
        report[str(relative)] = differences(json.loads(path.read_text()), json.loads(other.read_text()),
                                            tolerance=tolerance, ignore=frozenset(ignore))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.compare_records", description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.0, help="allowed difference of two floats")
    parser.add_argument("--ignore", action="append", default=[], metavar="KEY",
                        help="a key (at any depth) to leave out as well; repeatable")
    args = parser.parse_args(argv)
    report = compare(args.first, args.second, args.tolerance, args.ignore)
    for record, found in report.items():
        print(f"{record}: " + ("same" if not found else f"{len(found)} difference(s)"))
        for line in found:
            print("   ", line)
    if not report:
        print(f"no {RECORD_FILE} under {args.first}")
    return 0 if report and not any(report.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
