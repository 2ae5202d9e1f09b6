import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `import _utils` also under plain `pytest`


def pytest_configure(config):
    config.addinivalue_line('markers', 'shared_data: reads the real data in ../shared/data; skipped where it is absent')
