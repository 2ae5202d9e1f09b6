"""The environment a user can reproduce: requirements.lock pins every package of requirements.txt within its
bounds (`make lock` writes it from a fresh environment; `pip install -r requirements.lock` reproduces it)."""
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def lines(name):
    return [line.split('#')[0].strip() for line in (ROOT / name).read_text().splitlines()
            if line.split('#')[0].strip()]


def test_the_lock_pins_every_requirement_at_a_version_its_bounds_allow():
    pins = {}
    for line in lines('requirements.lock'):
        name, _, version = line.partition('==')
        assert version, f'{line!r} is not pinned with =='
        pins[canonicalize_name(name)] = Version(version)
    required = [Requirement(line) for line in lines('requirements.txt')]
    assert len(required) >= 10
    for requirement in required:
        pinned = pins.get(canonicalize_name(requirement.name))
        assert pinned is not None, f'{requirement.name} is not in requirements.lock: run `make lock`'
        assert requirement.specifier.contains(pinned, prereleases=True), (requirement, pinned)
