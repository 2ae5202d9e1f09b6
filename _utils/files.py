"""Files: where the project's folders are, and writing and reading files safely.

Every file a run writes (checkpoints, runs.csv's settings, GLUE submission files) goes through `atomic_write`:
a kill mid-write leaves the previous file intact, and a full disk is one clear line with nothing half-written left
behind. Every torch file a run reads goes through `safe_load`: it never runs code from the file, and a truncated,
damaged or foreign file is one clear line. A run holds `claim_run` on its folder while it writes there.
"""
import errno
import os
import re
import time
import zipfile
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
    """Call `write(tmp)` to fill a temporary file beside `path`, put it on disk, then rename it to `path`. A write
    that fails (a full disk, say) removes the temporary file and leaves `path` as it was, in one clear line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}.tmp{os.getpid()}')
    try:
        write(tmp)
        with open(tmp, 'rb+') as f: os.fsync(f.fileno())      # on disk before the rename makes it the real file
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(_write_failed(path, e)) from None
    finally:
        if tmp.exists(): tmp.unlink()
    return path


def _write_failed(path, e):
    kept = 'the earlier file there is intact' if path.exists() else 'nothing was written'
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f'no space left on the disk to write {shown(path)} ({_free(path.parent)} free); {kept}: free some '
                'space, or write elsewhere, and run again')
    return f'cannot write {shown(path)} ({e.strerror or first_line(e)}); {kept}'


def _free(folder):
    try: stat = os.statvfs(folder)
    except OSError: return 'unknown'
    return f'{stat.f_bavail * stat.f_frsize / 2**20:,.0f} MB'


STALE_TEMP = re.compile(r'\..+\.tmp(\d+)')  # atomic_write's temporary file: .<name>.tmp<pid>


def remove_stale_temps(*folders):
    """Delete the temporary files that a killed process left in `folders` (and below) while writing a file: a best
    model, a summary, a submission file. Those of a process still alive (one writing now) are left alone."""
    for path in [p for folder in folders if Path(folder).is_dir() for p in Path(folder).rglob('.*.tmp*')]:
        match = STALE_TEMP.fullmatch(path.name)
        if match and path.is_file() and not process_alive(int(match[1])): path.unlink(missing_ok=True)


def process_alive(pid):
    """Whether process `pid` of this machine is running. Where there is no harmless probe (Windows: os.kill ends the
    process), or the process is another user's, the answer is yes: what it owns is left alone."""
    if os.name != 'posix': return True
    try: os.kill(pid, 0)
    except ProcessLookupError: return False
    except OSError: return True
    return True


def atomic_save(obj, path):
    """torch.save through `atomic_write`, with the CRC-32 checksum of every record that `damage` checks."""
    import torch
    crc = getattr(torch.serialization, 'get_crc32_options', lambda: True)()

    def save(tmp):
        if not crc: torch.serialization.set_crc32_options(True)   # the checksums are what makes damage visible
        try:
            with open(tmp, 'wb') as f: torch.save(obj, f)
        finally:
            if not crc: torch.serialization.set_crc32_options(False)
    return atomic_write(path, save)


def atomic_write_text(path, text):
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding='utf-8'))


def claim_run(folder, run, fix, kind='run'):
    """Claim `run` (a `kind`: a run, a set of runs) in `folder` for this process: a second process claiming it while
    the first one lives is refused in one line (who holds it, and the `fix`), since both would write the same files.
    The claim is a lock the operating system drops when the process ends, however it ends (a kill too); `release()`
    drops it before. Claiming again from the same process (a notebook cell run twice) is allowed."""
    lock = Path(folder) / f'.{run}.lock'
    if lock in _claims: return _claims[lock]
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no claim
        return _Claim(lock, None)
    lock.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock, 'a+', encoding='utf-8')
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or 'another process'
        handle.close()
        raise UserError(f"{kind} '{run}' in {shown(folder)} is being written by {holder}; {fix}") from None
    handle.truncate(0)
    handle.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M')}\n")
    handle.flush()
    _claims[lock] = claim = _Claim(lock, handle)
    return claim


_claims = {}  # lock file -> the _Claim this process holds on it


class _Claim:
    def __init__(self, lock, handle): self.lock, self.handle = lock, handle

    def release(self):
        if _claims.pop(self.lock, None) is not None and self.handle: self.handle.close()


def damage(path):
    """Why the torch file at `path` is not whole, or None. torch writes a file as a zip archive with a CRC-32
    checksum per record (the tensors' bytes among them) but does not check them on loading: a bit flipped by a bad
    disk or copy would load as wrong weights. This reads every record against its checksum (about 1 GB/s) and finds
    a cut-short file by its missing zip directory. Other files (torch's old format, foreign ones) are left to torch.load
to accept or refuse."""
    path = Path(path)
    try:
        stat = path.stat()
        with open(path, 'rb') as f: head = f.read(4)
    except OSError as e:
        return f'unreadable: {e.strerror}'
    if head != b'PK\x03\x04': return None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _checked:
        _checked[key] = _zip_damage(path)
    return _checked[key]


_checked = {}  # (path, size, mtime) -> damage(): a file is read through once per process, not at every look


def _zip_damage(path):
    try:
        with zipfile.ZipFile(path) as z:
            records = z.infolist()
            if all(r.CRC == 0 for r in records if r.file_size): return None  # written with checksums turned off
            bad = z.testzip()
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        return f'truncated or broken ({first_line(e)[:80]})'
    return f'record {bad!r} differs from the checksum written with it' if bad else None


def safe_load(path, what, fix):
    """torch.load with weights_only (plain values and tensors: never code from the file), of a file found whole
    (`damage`); a file that cannot be read is one line naming `what` it should have been and the `fix`."""
    import torch
    if reason := damage(path):
        raise UserError(f"{what} '{shown(path)}' is damaged ({reason}); {fix}")
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise UserError(f"{what} '{path}' cannot be read (truncated or not a torch file: {first_line(e)[:120]}); "
                        f'{fix}') from None
