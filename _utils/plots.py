"""What the notebooks show: an example as text, one step token by token, the lr schedule, the loss and AUC curves,
the dev scores of the finetuning runs, and detected words coloured by P(replaced)."""
import numpy as np
import torch

from .glue import TASKS
from .glue_runs import final_rows


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
    ax.set(ylabel='dev score (each run)', title='Spread over runs (bar: median)')
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


def plot_detections(detections, width=9.0, fontsize=12, cmap='Reds'):
    """Detections (`detection.detect`'s, one or a list): each text's words as boxes coloured by P(replaced), white (0)
    to red (1), wrapped at `width` inches, one block per text; flagged words outlined, with their probability
    beneath; a colour bar beside."""
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.font_manager import FontProperties
    detections = [detections] if hasattr(detections, 'words') else list(detections)  # one or several
    dpi, font, colours = 100, FontProperties(size=fontsize), plt.get_cmap(cmap)
    renderer = RendererAgg(1, 1, dpi)
    inches = lambda s: renderer.get_text_width_height_descent(s, font, ismath=False)[0] / dpi
    pad, gap, line = fontsize / 72 * 0.3, fontsize / 72 * 0.35, fontsize / 72 * 2.4  # inches
    placed, row = [], 0.0  # (x, row, box width, word)
    for detection in detections:
        x, end = None, 0
        for w in detection.words:
            size = inches(w.text) + 2 * pad
            # after the previous word: a gap, narrower for punctuation written against a word
            x = 0.0 if x is None else x + (gap if w.start > end else gap / 4)
            if x > 0 and x + size > width: x, row = 0.0, row + 1
            placed.append((x, row, size, w))
            x, end = x + size, w.end
        row += 1.4  # a blank half line between texts
    width = max(x + size for x, _, size, _ in placed)  # as wide as the longest line
    height = max((row - 0.4) * line, 1.0)             # room for the colour bar beside a single line
    fig = plt.figure(figsize=(width + 1.4, height + 0.3))
    inches_to_figure = lambda left, bottom, w, h: [left / (width + 1.4), bottom / (height + 0.3), w / (width + 1.4),
                                                   h / (height + 0.3)]
    ax = fig.add_axes(inches_to_figure(0.1, 0.15, width, height))
    ax.set(xlim=(0, width), ylim=(height, 0))
    ax.axis('off')
    for x, r, _, w in placed:
        y = (r + 0.35) * line
        ax.text(x + pad, y, w.text, fontproperties=font, va='center', ha='left', parse_math=False,
                color='white' if w.probability > 0.65 else 'black',
                bbox=dict(boxstyle='round,pad=0.25', fc=colours(w.probability), ec='black' if w.flagged else '0.85',
                          lw=1.5 if w.flagged else 0.5))
        if w.flagged:
            ax.text(x + pad, y + 0.45 * line, f'{w.probability:.2f}', fontsize=fontsize * 0.7, va='center',
                    ha='left')
    bar = fig.add_axes(inches_to_figure(width + 0.4, 0.15, 0.15, height))
    fig.colorbar(ScalarMappable(Normalize(0, 1), colours), cax=bar, label='P(replaced)')
    return fig
