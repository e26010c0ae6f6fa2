"""The harness: what runs, checks and packages the notebooks. No notebook imports it, and it is
not part of the `nbutils` package that notebooks install.

`runner` (papermill runs: `make run`, `make run-all`), `lab` (`make lab`), `kaggle` (`make
kaggle` bundles), `repository` (`make set-repository`), `compare_records` (two runs' records
side by side), and the benchmarks `bench`, `bench_sandbox`, `bench_distributed` (`make bench*`).
The smoke profile's inputs (sample data, tiny models) are built by `tests/fixtures`.
"""
