"""GLUE scores: predictions from the classifier's outputs, each task's metrics, the GLUE average, and the
test-server submission (RECIPE.md, "GLUE finetuning" and "GLUE test submission")."""
import math
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .errors import UserError
from .files import atomic_write, atomic_write_text
from .glue import (BUNDLED_GLUE_DIR, GLUE_AVERAGE_TASKS, SUBMISSION_FILES, TASKS, TEST_SIZES, load_glue_tsv,
                   squash_name, task_by_name)


def predictions_from_logits(task, logits):
    """(B, n_outputs) logits -> (B,) numpy: class indices, or STS-B scores (the output ×5).

    STS-B scores are not clipped here: the dev metrics are computed on the raw outputs, as the official scorer
    does; only the submission file clips them to [0, 5] (`write_submission`).
    """
    logits = torch.as_tensor(logits).detach().float().cpu()
    if task_by_name(task).is_regression:
        return (logits.reshape(-1) * 5).numpy()
    return logits.argmax(-1).numpy()


def compute_metrics(task, predictions, labels):
    """The task's metrics, ×100: {'mcc'} CoLA, {'spearman', 'pearson'} STS-B, {'acc', 'f1'} MRPC/QQP, {'acc'}."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import f1_score, matthews_corrcoef
    task = task_by_name(task)
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    compute = {'mcc': lambda: matthews_corrcoef(labels, predictions),
               'acc': lambda: np.mean(predictions == labels),
               'f1': lambda: f1_score(labels, predictions),  # positive class 1 (paraphrase / duplicate)
               'pearson': lambda: pearsonr(predictions, labels)[0],
               'spearman': lambda: spearmanr(predictions, labels)[0]}
    return {name: 100 * float(compute[name]()) for name in task.metrics}


def main_score(task, metrics):
    return metrics[task_by_name(task).main_metric]


class GlueAverage(NamedTuple):
    score: float    # mean over the tasks present (nan if none)
    missing: list   # tasks of the 8 without a score: the average is then not comparable with the paper's


def glue_average(per_task_main_scores):
    """The paper's GLUE dev average: the 8 tasks without WNLI (and AX); MNLI = matched.

    `per_task_main_scores`: {task name: main score} (CoLA MCC, STS-B Spearman, accuracy elsewhere); other keys
    (WNLI, AX) are ignored.
    """
    # MNLI counts with its matched score: a key 'MNLI-mm' (mismatched) is left out rather than taken for MNLI.
    scores = {task_by_name(name).name: score for name, score in per_task_main_scores.items()
              if squash_name(name) not in ('mnlimm', 'mnlimismatched')}
    present = [scores[t] for t in GLUE_AVERAGE_TASKS if t in scores]
    missing = [t for t in GLUE_AVERAGE_TASKS if t not in scores]
    return GlueAverage(float(np.mean(present)) if present else math.nan, missing)


class Submission(NamedTuple):
    files: list        # paths written, in submission order
    zip_path: Path
    missing: list      # submission stems not written (the GLUE server needs all 11)
    wrong_sizes: dict  # stem -> (rows written, official test size)


def _prediction_text(task, prediction):
    if task.is_regression:
        value = float(prediction)
        if math.isnan(value): raise UserError(f'{task.name}: a prediction is nan')
        return f'{min(max(value, 0.0), 5.0):.3f}'
    index = int(prediction)
    if not 0 <= index < len(task.labels):
        raise UserError(f'{task.name}: class index {index} out of range (classes: {", ".join(task.labels)})')
    return task.labels[index]


def write_submission(predictions, out_dir, zip_path=None, wnli_test_indices=None, glue_dir=BUNDLED_GLUE_DIR):
    """Write the GLUE test-server files and the zip (RECIPE.md, "GLUE test submission").

    `predictions`: {stem: (test indices, predictions)}, stems `CoLA SST-2 MRPC STS-B QQP MNLI-m MNLI-mm QNLI RTE
    WNLI AX`; predictions are class indices (tsv label order) or STS-B scores. Each file: header
    `index<TAB>prediction`, rows sorted by index. WNLI, when absent, predicts the majority class 0 for every test
    index (from `wnli_test_indices`, else read from `glue_dir`'s WNLI/test.tsv, complete in the bundled sample).
    Stems left out are reported in `missing` and in a printed line; the zip holds the files written, at its top
    level (default `out_dir/glue_submission.zip`).
    """
    unknown = [stem for stem in predictions if stem not in SUBMISSION_FILES]
    if unknown: raise UserError(f"unknown submission file {', '.join(unknown)}; expected {' '.join(SUBMISSION_FILES)}")
    predictions = dict(predictions)
    if 'WNLI' not in predictions:
        if wnli_test_indices is None:
            wnli_test_indices = load_glue_tsv('WNLI', glue_dir, splits=('test',), required=('test',))['test']['idx']
        predictions['WNLI'] = (list(wnli_test_indices), [0] * len(wnli_test_indices))  # majority class (RECIPE.md)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, missing, wrong_sizes = [], [], {}
    for stem, (task_name, _) in SUBMISSION_FILES.items():
        if stem not in predictions:
            missing.append(stem)
            continue
        task = TASKS[task_name]
        indices, values = (np.asarray(x).reshape(-1) for x in predictions[stem])
        if len(indices) != len(values):
            raise UserError(f'{stem}: {len(indices)} indices but {len(values)} predictions')
        if len(np.unique(indices)) != len(indices): raise UserError(f'{stem}: repeated test indices')
        order = np.argsort(indices, kind='stable')  # test order, whatever order the batches came in
        lines = ['index\tprediction'] + [f'{int(indices[i])}\t{_prediction_text(task, values[i])}' for i in order]
        path = out_dir / f'{stem}.tsv'
        atomic_write_text(path, '\n'.join(lines) + '\n')  # a crash never leaves a half-written file
        files.append(path)
        if len(indices) != TEST_SIZES[stem]: wrong_sizes[stem] = (len(indices), TEST_SIZES[stem])

    zip_path = Path(zip_path) if zip_path else out_dir / 'glue_submission.zip'
    zip_path.parent.mkdir(parents=True, exist_ok=True)

    def write_zip(tmp):
        with zipfile.ZipFile(tmp, 'w', zipfile.ZIP_DEFLATED) as z:
            for path in files:  # top level, as the server wants; a fixed date: the same predictions, the same zip
                entry = zipfile.ZipInfo(path.name, date_time=(1980, 1, 1, 0, 0, 0))
                entry.compress_type, entry.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
                z.writestr(entry, path.read_bytes())
    atomic_write(zip_path, write_zip)

    if missing:
        print(f"GLUE submission incomplete: no predictions for {', '.join(s + '.tsv' for s in missing)}; "
              f'the GLUE server needs all {len(SUBMISSION_FILES)} files')
    if wrong_sizes:
        print('GLUE submission: test sizes differ from the official ones (not a full test set?): ' +
              ', '.join(f'{s}.tsv {n} rows, expected {expected}' for s, (n, expected) in wrong_sizes.items()))
    return Submission(files, zip_path, missing, wrong_sizes)
