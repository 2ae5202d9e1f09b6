"""The environment a user can reproduce: requirements.lock pins every package of requirements.txt within its
bounds (`make lock` writes it from a fresh environment; `pip install -r requirements.lock` reproduces it). And the
floors: `.ci/floors` installs the lowest version each bound allows and runs a smoke subset of these tests."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
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


def floors_job(option):
    """What `.ci/floors` prints with `option`, one item a line (the job itself installs and runs nothing here)."""
    res = subprocess.run(['bash', str(ROOT / '.ci' / 'floors'), option], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.split()


@pytest.mark.skipif(shutil.which('bash') is None, reason='.ci/floors is a bash script')
def test_the_floors_job_installs_each_lower_bound_of_requirements_txt_exactly():
    pins = {}
    for line in floors_job('--constraints'):
        name, _, version = line.partition('==')
        pins[canonicalize_name(name)] = Version(version)
    for requirement in (Requirement(line) for line in lines('requirements.txt')):
        lower = [Version(s.version) for s in requirement.specifier if s.operator == '>=']
        if not lower: assert canonicalize_name(requirement.name) not in pins, requirement
        else: assert pins.pop(canonicalize_name(requirement.name), None) == lower[0], requirement
    assert not pins, f'.ci/floors pins what requirements.txt does not bound: {pins}'


@pytest.mark.skipif(shutil.which('bash') is None, reason='.ci/floors is a bash script')
def test_every_smoke_test_of_the_floors_job_exists():
    smoke = floors_job('--smoke')
    assert len(smoke) >= 10
    for test in smoke:
        path, _, name = test.partition('::')
        assert (ROOT / path).is_file(), test
        if name: assert re.search(rf'^def {re.escape(name)}\(', (ROOT / path).read_text(), re.M), test
