"""User-facing errors: one clear line saying what is wrong and what to do, never a bare traceback."""
import sys


class UserError(Exception):
    """A problem with the user's input (config, files, data). Its message names the problem and the fix."""


def first_line(e):
    """An exception's first line, for a one-line message."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def did_you_mean(word, options):
    """The option closest to a misspelled `word`, or None."""
    import difflib
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.5)
    return close[0] if close else None


def install_excepthook():
    """In a script: a `UserError` prints one line and exits with status 2 (unless --debug or ELECTRA_DEBUG=1)."""
    import os
    if getattr(sys.excepthook, 'one_line', False): return  # installed already
    default_hook = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, UserError) and not ('--debug' in sys.argv or os.environ.get('ELECTRA_DEBUG')):
            print(f'error: {value}', file=sys.stderr)
            sys.exit(2)
        default_hook(kind, value, tb)
    hook.one_line = True
    sys.excepthook = hook


def ensure_writable(folder, flag):
    """Create `folder` and check a file can be written there, before any work starts; else one clear error."""
    import tempfile
    from pathlib import Path
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix='.write_test'):
            pass
    except OSError as e:
        raise UserError(f"cannot write to {flag} '{folder}' ({e.strerror or e}); choose a folder you can write to "
                        f"with {flag}") from None
    return Path(folder)
