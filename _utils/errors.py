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
