"""The pinned environment: requirements.txt, environment.yml and pyproject.toml agree."""

import re

import yaml
from packaging.requirements import Requirement

from conftest import ROOT

PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)$")


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = PIN.match(line)
            assert match, f"requirements.txt: {line!r} is not an exact pin (name==version)"
            pins[match[1].lower().replace("_", "-")] = match[2]
    return pins


def conda_pins() -> tuple[dict[str, str], list[str]]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins, other = {}, []
    for line in pip_section:
        match = PIN.match(line)
        if match:
            pins[match[1].lower().replace("_", "-")] = match[2]
        else:
            other.append(line)
    return pins, other


def test_environment_yml_names_the_same_pins_as_requirements():
    pins, other = conda_pins()
    assert pins == requirement_pins()
    assert other == ["-e ."], "environment.yml should install only the pins and nbutils itself"


def test_torch_is_pinned_to_the_cpu_wheel_version():
    assert requirement_pins()["torch"] == "2.13.0"


def test_package_dependencies_admit_the_pinned_versions():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = requirement_pins()
    deps = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    for dep in map(Requirement, deps):
        name = dep.name.lower().replace("_", "-")
        assert name in pins, f"pyproject dependency {name} is not pinned in requirements.txt"
        assert dep.specifier.contains(pins[name]), f"{dep} excludes the pinned {name}=={pins[name]}"


def test_installed_versions_match_the_pins():
    """The venv the tests run in is the pinned one (catches a stale `make setup`)."""
    from importlib import metadata

    for name, version in requirement_pins().items():
        installed = metadata.version(name)
        assert installed.split("+")[0] == version, f"{name}: installed {installed}, pinned {version}"
