"""Generate the scripts from the notebooks (the notebooks are the source):

    python -m _utils.nbscript            # rewrite pretrain.py and finetune.py from their notebooks
    python -m _utils.nbscript --check    # exit 1 if a script is out of sync with its notebook

Code cells go into the script in order; a cell whose first line is `#| notebook-only` (pictures, tables, peeks
at tensors) stays in the notebook. Markdown cells become comment blocks, so the script tells the same story.
"""
import sys
from pathlib import Path

import nbformat

from .files import PROJECT_DIR
PAIRS = {'Pretrain.ipynb': 'pretrain.py', 'Finetune_GLUE.ipynb': 'finetune.py'}
NOTEBOOK_ONLY = '#| notebook-only'


def script_from_notebook(notebook_path):
    nb = nbformat.read(str(notebook_path), as_version=4)
    parts = ['#!/usr/bin/env python',
             f'# Generated from {Path(notebook_path).name} by `python -m _utils.nbscript`: edit the notebook, '
             'then regenerate.']
    for cell in nb.cells:
        src = cell.source.strip('\n')
        if not src: continue
        if cell.cell_type == 'markdown':
            parts.append('\n'.join(('# ' + line).rstrip() for line in src.splitlines()))
        elif cell.cell_type == 'code' and not src.startswith(NOTEBOOK_ONLY):
            if any(line.lstrip().startswith(('%', '!')) for line in src.splitlines()):
                raise ValueError(f'{notebook_path}: IPython magics cannot go into the script; mark the cell '
                                 f'{NOTEBOOK_ONLY!r}:\n{src[:200]}')
            parts.append(src)
    return '\n\n'.join(parts) + '\n'


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    check = '--check' in argv
    stale = []
    for nb_name, script_name in PAIRS.items():
        nb_path, script_path = PROJECT_DIR / nb_name, PROJECT_DIR / script_name
        if not nb_path.exists(): continue
        text = script_from_notebook(nb_path)
        if check:
            if not script_path.exists() or script_path.read_text() != text: stale.append(script_name)
        else:
            script_path.write_text(text)
            print(f'wrote {script_name} from {nb_name}')
    if stale:
        print(f"out of sync with their notebooks: {', '.join(stale)}; run `python -m _utils.nbscript`")
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
