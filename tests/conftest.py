import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `import _utils` also under plain `pytest`


def pytest_configure(config):
    config.addinivalue_line('markers', 'shared_data: reads the real data in ../shared/data; skipped where it is absent')
    config.addinivalue_line('markers', 'slow: runs a script, several processes or a notebook (seconds to a minute '
                            'each); the quick tier `python -m pytest tests -m "not slow"` leaves these out')


@pytest.fixture(scope='session')
def tokenizer():
    """The bundled BERT uncased WordPiece tokenizer (30,522 tokens)."""
    from _utils.text import load_tokenizer
    return load_tokenizer('bundled')
