"""Every conda environment has an exact lock beside it (envs/NAME.linux-64.lock.txt, written by envs/pin.py) that
pins each of the environment's own requirements at a version the environment allows."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ENVS = Path(__file__).resolve().parents[1] / "envs"
_spec = importlib.util.spec_from_file_location("pin", ENVS / "pin.py")
pin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pin)

PINNED_LINE = re.compile(r"^[a-z0-9-]+==\S+$")


def read_lock(lock: Path) -> tuple[list[str], dict[str, str]]:
    lines = lock.read_text().splitlines()
    pins = [line for line in lines if not line.startswith("#")]
    return [line for line in lines if line.startswith("#")], dict(line.split("==", 1) for line in pins)


@pytest.mark.parametrize("env", sorted(ENVS.glob("*.yaml")), ids=lambda path: path.stem)
def test_each_environment_pins_its_requirements_at_versions_it_allows(env):
    lock = pin.lock_path(env)
    assert lock.is_file(), f"{lock.name} is missing: run python envs/pin.py {env.stem}"
    python, requirements, _ = pin.read_env(env)
    comments, pins = read_lock(lock)
    assert f"# python={python}" in comments, f"{lock.name} was resolved for another Python: rerun envs/pin.py"
    for requirement in map(Requirement, requirements):
        if requirement.marker and not requirement.marker.evaluate({"python_version": python}):
            continue
        name = pin.normalized(requirement.name)
        assert name in pins, f"{lock.name} does not pin {name}, which {env.name} asks for: rerun envs/pin.py"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{lock.name} pins {name}=={pins[name]}, outside {env.name}'s {requirement}: rerun envs/pin.py"
        )


@pytest.mark.parametrize("lock", sorted(ENVS.glob("*.lock.txt")), ids=lambda path: path.name)
def test_a_lock_is_exact_versions_only_and_belongs_to_an_environment(lock):
    assert (ENVS / f"{lock.name.split('.')[0]}.yaml").is_file()
    pins = [line for line in lock.read_text().splitlines() if not line.startswith("#")]
    assert pins and all(PINNED_LINE.match(line) for line in pins)
    assert "distillery" not in dict(line.split("==", 1) for line in pins), "the project itself is installed from ../"
