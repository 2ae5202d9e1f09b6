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
        if not ('--debug' in sys.argv or os.environ.get('ELECTRA_DEBUG')):
            if issubclass(kind, UserError):
                print(f'error: {value}', file=sys.stderr)
                sys.exit(2)
            if peer := lost_peer(kind, value):
                print(f"error: rank {os.environ.get('RANK', 0)}: another process of this run has stopped ({peer}), so "
                      'this one stops too; continue the run from its newest checkpoint with --resume latest (under '
                      'torchrun --max-restarts N it does so by itself)', file=sys.stderr)
                sys.exit(3)
        default_hook(kind, value, tb)
    hook.one_line = True
    sys.excepthook = hook


# How gloo and NCCL say that a process they were exchanging with is gone
PEER_GONE = ('Connection reset by peer', 'Connection closed by peer', 'Broken pipe', 'NCCL communicator was aborted')


def lost_peer(kind, value):
    """In a run of several processes, the words of a collective that failed because another process died (it lost
    its connection to it); else ''."""
    import os
    if int(os.environ.get('WORLD_SIZE', 1)) < 2 or not issubclass(kind, RuntimeError): return ''
    return next((words.lower() for words in PEER_GONE if words in str(value)), '')


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
