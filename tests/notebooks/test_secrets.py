"""No secret in any output: every notebook's session smoke run had a (fake) hub token in its
environment; none of the files it wrote may contain it (executed notebook, run record, logs,
checkpoints, plots)."""

import pytest

from conftest import FAKE_TOKEN, ROOT

NOTEBOOKS = sorted(path.stem for path in (ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_the_hub_token_never_reaches_an_output_file(smoke_run, notebook):
    code, outputs = smoke_run(notebook)
    files = [path for path in outputs.rglob("*") if path.is_file()]
    assert files, f"the smoke run of {notebook} wrote nothing"
    leaks = [str(path) for path in files if FAKE_TOKEN.encode() in path.read_bytes()]
    assert not leaks, f"the token leaked into {leaks}"
    # A notebook that loads from the hub did read the token (it says so, without showing it).
    # (nb.run.start and nb.run.setup.start read it unless told token_name=None.)
    source = (ROOT / "notebooks" / f"{notebook}.ipynb").read_text()
    starts = "nb.run.start(" in source or "nb.run.setup.start(" in source
    if "get_secret" in source or (starts and "token_name=None" not in source):
        executed = [path for path in files if path.suffix == ".ipynb"]
        assert any("hub token: set" in path.read_text() for path in executed), \
            f"no executed {notebook} notebook reports the token it was given"
