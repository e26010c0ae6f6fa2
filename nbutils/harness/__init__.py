"""The harness: what runs, checks and packages the notebooks; no notebook imports it.

`runner` (papermill runs: `make run`, `make run-all`), `lab` (`make lab`), `kaggle` (`make
kaggle` bundles), `repository` (`make set-repository`), `bench`, `bench_sandbox` (`make bench*`), and the offline smoke inputs:
`fixtures` (builds them), `tiny_models`, `tiny_pretraining`, `samples`. It lives in the
repository only: the wheel that notebooks install on Kaggle and Colab leaves it out
(pyproject.toml), and nothing in the library imports it (tests/test_package.py).
"""
