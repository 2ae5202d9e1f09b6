"""The notebooks run top to bottom at tiny scale (what CI executes)."""
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # the quick tier (-m "not slow") leaves these out



def execute(name, args, tmp_path):
    nb = nbformat.read(str(ROOT / name), as_version=4)
    os.environ['ELECTRA_ARGS'] = args
    try:
        NotebookClient(nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': str(ROOT)}}).execute()
    finally:
        os.environ.pop('ELECTRA_ARGS')
    return nb


def outputs_text(nb):
    return '\n'.join(o.get('text', '') for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []))


def test_pretrain_notebook_runs_at_tiny_scale(tmp_path):
    nb = execute('Pretrain.ipynb', f'--max_steps 6 --batch_size 4 --log_every 2 --logger csv --compile none '
                                   f'--checkpoint_dir {tmp_path}/ckpt --log_dir {tmp_path}/logs', tmp_path)
    text = outputs_text(nb)
    assert 'Checkpoints:' in text and 'demo_seed0_100pct.pth' in text
    assert (tmp_path / 'ckpt' / 'demo_seed0_100pct.pth').exists()
    # the pictures were drawn: the schedule and the loss curves
    images = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]
    assert len(images) >= 2


def test_finetune_notebook_runs_at_tiny_scale(tmp_path):
    nb = execute('Finetune_GLUE.ipynb', f'--model random --size tiny --tasks WNLI,RTE --n_runs 2 --epochs 1 '
                                        f'--logger csv --group_name nbtest --log_dir {tmp_path}/logs '
                                        f'--checkpoint_dir {tmp_path}/ckpt --output_dir {tmp_path}/out', tmp_path)
    assert 'GLUE avg' in outputs_text(nb)
    assert (tmp_path / 'out' / 'nbtest' / 'glue_submission.zip').exists()
    assert (tmp_path / 'logs' / 'nbtest' / 'runs.csv').exists()
