"""Build everything the smoke profile reads: sample data and tiny models, in `.cache/`.

    python -m nbutils.harness.fixtures            # build what is missing or out of date
    python -m nbutils.harness.fixtures --force    # rebuild all

The smoke parameter files point `data_source` and `model_name` at these paths, so the notebooks
load them with the same `load_dataset` / `from_pretrained` calls they use for hub ids.
A stamp (hash of the code that makes them, and the seed) decides whether a rebuild is needed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

from nbutils.harness import samples, tiny_models, tiny_pretraining

DEFAULT_ROOT = Path(".cache")
SEED = 0


def tiny_model_dir(root: Path, arch: str) -> Path:
    return root / "tiny-models" / arch


def sample_data_dir(root: Path) -> Path:
    return root / "sample-data"


def _stamp() -> str:
    sources = sorted(Path(samples.__file__).parent.glob("*.py")) + [Path(tiny_models.__file__)]
    code = b"".join(path.read_bytes() for path in sources)
    return hashlib.sha256(code + str(SEED).encode()).hexdigest()


def build(root: str | Path = DEFAULT_ROOT, force: bool = False, quiet: bool = False) -> Path:
    """Build sample data and all tiny models under `root` unless the stamp says they are current.

    Safe to call from several processes at once (a file lock serializes them), and a reader
    never sees a half-built folder: everything is built beside the old one, then swapped in.
    """
    import fcntl

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp_file = root / "fixtures.json"
    stamp = _stamp()
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # The briefly pre-trained tiny BERT (strategies study) has a stamp of its own: its
        # pre-training takes a while, so it is redone only when its own code changes.
        tiny_pretraining.build(root, seed=SEED, force=force, quiet=quiet)
        if not force and stamp_file.exists() and json.loads(stamp_file.read_text()).get("stamp") == stamp:
            return root
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        staging = root / ".staging"
        shutil.rmtree(staging, ignore_errors=True)
        for name, write in samples.SAMPLE_FILES.items():
            write(sample_data_dir(staging) / name, seed=SEED)
        texts = samples.corpus(SEED)
        for arch in tiny_models.ARCHITECTURES:
            tiny_models.build_tiny_model(arch, tiny_model_dir(staging, arch), texts, seed=SEED)
            if not quiet:
                print(f"built tiny {arch} -> {tiny_model_dir(root, arch)}")
        for sub in ("sample-data", "tiny-models"):
            shutil.rmtree(root / sub, ignore_errors=True)
            (staging / sub).rename(root / sub)
        staging.rmdir()
        stamp_file.write_text(json.dumps({"stamp": stamp, "seed": SEED}))
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="folder to build into")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    build(args.root, force=args.force)


if __name__ == "__main__":
    main()
