"""Files: where the project's folders are, and writing and reading files safely.

Every file a run writes (checkpoints, runs.csv's settings, GLUE submission files) goes through `atomic_write`:
a kill mid-write leaves the previous file intact. Every torch file a run reads goes through `safe_load`: it never
runs code from the file, and a truncated or foreign file is one clear line.
"""
import os
from pathlib import Path

from .errors import UserError, first_line

PROJECT_DIR = Path(__file__).resolve().parent.parent


def shown(text):
    """`text` (a message, a path) as printed: paths inside the project folder relative to it
    ('checkpoints/pretrain/demo_seed0_100pct.pth', as the config's relative paths read), so that what a run prints,
    and a notebook's saved output, reads the same on every machine. Paths elsewhere stay as they are."""
    return str(text).replace(str(PROJECT_DIR) + os.sep, '')


def say(text):
    """Print `text` with the project folder's paths `shown` relative to it."""
    print(shown(text), flush=True)


def slug(s):
    """`s` as a file or folder name: letters, digits and -_. kept, anything else '_', at most 48 characters."""
    return ''.join(c if c.isalnum() or c in '-_.' else '_' for c in s)[:48]


def project_path(path):
    """A path from the config: absolute as given, relative ones from the project folder (not the current one)."""
    path = Path(os.path.expanduser(str(path)))
    return path if path.is_absolute() else PROJECT_DIR / path


def atomic_write(path, write):
    """Call `write(tmp)` to fill a temporary file beside `path`, put it on disk, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    try:
        write(tmp)
        with open(tmp, 'rb+') as f: os.fsync(f.fileno())      # on disk before the rename makes it the real file
        os.replace(tmp, path)
    finally:
        if tmp.exists(): tmp.unlink()
    return path


def atomic_save(obj, path):
    """torch.save through `atomic_write`."""
    import torch

    def save(tmp):
        with open(tmp, 'wb') as f: torch.save(obj, f)
    return atomic_write(path, save)


def atomic_write_text(path, text):
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding='utf-8'))


def safe_load(path, what, fix):
    """torch.load with weights_only (plain values and tensors: never code from the file); a file that cannot be
    read is one line naming `what` it should have been and the `fix`."""
    import torch
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise UserError(f"{what} '{path}' cannot be read (truncated or not a torch file: {first_line(e)[:120]}); "
                        f'{fix}') from None
