"""What the notebooks show: an example as text, one step token by token, the lr schedule, the loss and AUC curves,
the dev scores of the finetuning runs."""
import numpy as np
import torch

from .glue import TASKS
from .runs import final_rows


def plot_runs(runs, ax=None):
    """Each run's final dev score per task (dots) and the median (bar): the spread over seeds. `runs`: RunResults,
    or the rows of runs.csv as a DataFrame."""
    import matplotlib.pyplot as plt
    final = final_rows(runs)
    tasks = [t for t in TASKS if t in set(final.task)]
    ax = ax or plt.subplots(figsize=(1.4 * len(tasks) + 2, 3.5))[1]
    for i, name in enumerate(tasks):
        scores = final[final.task == name]['score'].to_numpy(float)
        jitter = np.random.default_rng(i).uniform(-0.12, 0.12, len(scores))
        ax.plot(i + jitter, scores, 'o', alpha=0.7)
        ax.hlines(np.median(scores), i - 0.3, i + 0.3, color='black')
    ax.set_xticks(range(len(tasks)), [f'{t}\n({TASKS[t].main_metric})' for t in tasks])
    ax.set(ylabel='dev score (final epoch)', title='Spread over runs (bar: median)')
    return ax


def describe_example(example, tokenizer):
    """A packed example as text, one segment per line."""
    ids, types = example['input_ids'].tolist(), example['token_type_ids'].tolist()
    n = sum(1 for i in ids if i != tokenizer.pad_token_id)
    a = [t for t, s in zip(ids[:n], types[:n]) if s == 0]
    b = [t for t, s in zip(ids[:n], types[:n]) if s == 1]
    print(f'{n} real tokens + {len(ids) - n} padding; segment A {len(a)} tokens (with [CLS] and [SEP]), '
          f'segment B {len(b)} tokens')
    print('A:', tokenizer.decode(a))
    print('B:', tokenizer.decode(b) if b else '(single-segment example)')


@torch.no_grad()
def peek_step(electra, batch, tokenizer, row=0, max_rows=40):
    """One step on `batch`, shown for one row: the original token, what the generator saw, what the
    discriminator saw, the label and the discriminator's P(replaced). Masked positions and the first tokens."""
    import pandas as pd
    device = next(electra.parameters()).device
    ids, types = batch['input_ids'].long().to(device), batch['token_type_ids'].long().to(device)
    was_training = electra.training
    electra.eval()
    out = electra(ids, types)
    electra.train(was_training)
    n = int(out.attention_mask[row].sum())
    masked = torch.zeros(ids.size(1), dtype=torch.bool)
    masked[out.masked_positions[row][out.masked_weight[row] > 0].cpu()] = True
    tokens = lambda t: tokenizer.convert_ids_to_tokens(t[row, :n].tolist())
    table = pd.DataFrame({'original': tokens(ids), 'discriminator sees': tokens(out.disc_input),
                          'masked': masked[:n].tolist(), 'replaced (label)': out.is_replaced[row, :n].tolist(),
                          'P(replaced)': torch.sigmoid(out.disc_logits[row, :n].float()).cpu().round(decimals=3)})
    return table[table.masked | (table.index < 8)].head(max_rows)


def plot_schedule(lr, total_steps, warmup_steps, ax=None):
    import matplotlib.pyplot as plt

    from .optim import linear_warmup_decay
    steps = np.linspace(0, total_steps, 500)
    ax = ax or plt.subplots(figsize=(6, 3))[1]
    ax.plot(steps, [lr * linear_warmup_decay(s, total_steps, warmup_steps) for s in steps])
    ax.set(xlabel='step', ylabel='learning rate', title=f'warmup {warmup_steps:,} x linear decay over {total_steps:,}')
    return ax


def plot_history(history):
    import matplotlib.pyplot as plt
    import pandas as pd

    from .electra import binary_entropy
    df = pd.DataFrame(history)
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
    df.plot(x='step', y='mlm_loss', ax=axes[0], title='generator MLM loss')
    # below 0: better than always guessing "original" (the plateau every run starts on)
    axes[1].plot(df.step, df.disc_loss - [binary_entropy(r) for r in df.replaced_rate], label='disc_loss - baseline')
    axes[1].axhline(0, ls='--', c='grey')
    axes[1].set(title='discriminator loss minus the majority-class baseline', xlabel='step', ylim=(-0.03, 0.03))
    axes[1].legend()
    df.plot(x='step', y=['disc_auc', 'gen_acc', 'disc_precision', 'disc_recall'], ax=axes[2], title='accuracy, AUC')
    return fig
