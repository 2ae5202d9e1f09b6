"""User-facing errors: one clear line saying what is wrong and what to do, never a bare traceback."""
import sys


class UserError(Exception):
    """A problem with the user's input (config, files, data). Its message names the problem and the fix."""


def run_main(main, argv=None):
    """Call `main(argv)`; turn a `UserError` into one line on stderr and exit status 2.

    With `--debug` among the arguments the full traceback is shown instead.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = '--debug' in argv
    try:
        return main([a for a in argv if a != '--debug'])
    except UserError as e:
        if debug: raise
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)


def install_excepthook():
    """In a script: a `UserError` prints one line and exits with status 2 (unless --debug or ELECTRA_DEBUG=1)."""
    import os
    default_hook = sys.excepthook

    def hook(kind, value, tb):
        if issubclass(kind, UserError) and not ('--debug' in sys.argv or os.environ.get('ELECTRA_DEBUG')):
            print(f'error: {value}', file=sys.stderr)
            sys.exit(2)
        default_hook(kind, value, tb)
    sys.excepthook = hook


def ensure_writable(folder, flag):
    """Create `folder` and check a file can be written there, before any work starts; else one clear error."""
    import os
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
