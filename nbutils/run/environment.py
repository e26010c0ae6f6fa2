"""Where a notebook runs: Kaggle, Colab or a local checkout, and the folders that follow.

Kaggle mounts inputs read-only under /kaggle/input and keeps only /kaggle/working; Colab
starts in /content. A run's relative `output_dir` lands in the writable working folder.
`NBUTILS_KAGGLE_ROOT` moves the /kaggle tree elsewhere, so tests can simulate Kaggle.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

KAGGLE_ROOT_VARIABLE = "NBUTILS_KAGGLE_ROOT"


@dataclass(frozen=True)
class Environment:
    name: str  # "kaggle", "colab" or "local"
    working_dir: Path  # where outputs and checkpoints are written
    input_dir: Path | None = None  # Kaggle's read-only inputs

    def describe(self) -> str:
        inputs = f", inputs in {self.input_dir}" if self.input_dir else ""
        return f"{self.name} (writing under {self.working_dir}{inputs})"


def _colab_importable() -> bool:
    try:
        return importlib.util.find_spec("google.colab") is not None
    except ModuleNotFoundError:  # no `google` package at all
        return False


def detect(environ: dict | None = None) -> Environment:
    """Kaggle if its kernel variable is set or /kaggle/working exists; Colab if its variables
    or module are there; otherwise local (outputs relative to the current folder)."""
    environ = os.environ if environ is None else environ
    kaggle = Path(environ.get(KAGGLE_ROOT_VARIABLE, "/kaggle"))
    if environ.get("KAGGLE_KERNEL_RUN_TYPE") or (kaggle / "working").is_dir():
        return Environment("kaggle", kaggle / "working", kaggle / "input")
    if environ.get("COLAB_RELEASE_TAG") or environ.get("COLAB_GPU") or _colab_importable():
        return Environment("colab", Path("/content"))
    return Environment("local", Path.cwd())


def run_folder(output_dir: str, env: Environment | None = None) -> Path:
    """The folder for a run's outputs: absolute paths as given, relative ones under the
    environment's working folder (on Kaggle, /kaggle/working/<output_dir>)."""
    env = env or detect()
    path = Path(output_dir)
    return path if path.is_absolute() else env.working_dir / path


# File suffixes of the local inputs the notebooks read (data files and folders of weights).
_LOCAL_SUFFIXES = (".csv", ".json", ".jsonl", ".parquet", ".txt", ".arrow", ".tsv")


def looks_local(value: str) -> bool:
    """A path on this machine (absolute, `./`, `../`, `~`, `.cache/...` or a data file), not a
    Hugging Face hub id (`owner/name`)."""
    return bool(value) and (value.startswith(("/", ".", "~")) or value.lower().endswith(_LOCAL_SUFFIXES))


def small_scale_hint(project: str) -> str:
    """How to run a project at small scale on this machine, for error messages."""
    return (f"To explore this notebook at small scale on this machine (a tiny model, sample data, "
            f"offline, seconds on a CPU), run from the repository root:\n"
            f"    make lab RUN={project} PROFILE=smoke    (JupyterLab on a prepared copy)\n"
            f"    make run RUN={project}                  (headless)\n"
            f"The notebook's own defaults are the full recipe: real data and checkpoints, a GPU.")


def _hub_id(value: str) -> bool:
    parts = value.split("/")
    return len(parts) == 2 and all(parts) and not looks_local(value)


def in_offline_hub_cache(repo_id: str) -> bool:
    """Whether a hub model or data set `owner/name` has anything in the local caches."""
    from huggingface_hub import constants

    flat = repo_id.replace("/", "--")
    hub = Path(constants.HF_HUB_CACHE)
    if (hub / f"models--{flat}").exists() or (hub / f"datasets--{flat}").exists():
        return True
    try:
        from datasets import config

        return (Path(config.HF_DATASETS_CACHE) / repo_id.replace("/", "___")).exists()
    except ImportError:
        return False


def require_inputs(project: str, **inputs: str) -> None:
    """Stop early, with a way forward, when an input (`data_source=...`) cannot be there: a
    local path that does not exist, or, with HF_HUB_OFFLINE set, a hub id with nothing cached.

    Online, hub ids are left to the libraries (they download). Runs before the setup creates
    the run folder, so a notebook opened as stored leaves no stray `outputs/` folder beside itself.
    """
    from huggingface_hub import constants

    missing = [f"{name} = {value!r}" for name, value in inputs.items()
               if isinstance(value, str) and looks_local(value) and not Path(value).expanduser().exists()]
    if constants.HF_HUB_OFFLINE:
        missing += [f"{name} = {value!r} (HF_HUB_OFFLINE is set and it is not in the local cache)"
                    for name, value in inputs.items()
                    if isinstance(value, str) and _hub_id(value) and not in_offline_hub_cache(value)]
    if missing:
        raise FileNotFoundError("not found: " + "; ".join(missing) + f" (the kernel runs in {Path.cwd()}).\n"
                                + small_scale_hint(project))
