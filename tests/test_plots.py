"""The notebooks' pictures and peeks (`_utils/plots.py`), drawn off-screen: what each one shows is checked on its
artists, so the quick tier covers them without running a notebook."""
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from _utils import plots  # noqa: E402
from _utils.detection import Detection, Word  # noqa: E402
from _utils.finetuning import RunResult  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close('all')


def test_plot_runs_shows_each_runs_final_score_and_the_median_per_task():
    row = lambda epoch, score: dict(epoch=epoch, step=epoch, train_loss=0.5, score=score, seconds=1.0)
    runs = [RunResult('RTE', i, i, [row(1, 40.0), row(2, s)]) for i, s in enumerate((50.0, 60.0, 70.0))]
    runs.append(RunResult('CoLA', 0, 0, [row(1, 10.0)]))
    ax = plots.plot_runs(runs)
    dots = {round(float(np.mean(line.get_xdata()))): sorted(line.get_ydata()) for line in ax.get_lines()}
    assert dots == {0: [10.0], 1: [50.0, 60.0, 70.0]}  # CoLA first (GLUE's order), the final epochs only
    medians = sorted(seg[0][1] for coll in ax.collections for seg in coll.get_segments())
    assert medians == [10.0, 60.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ['CoLA\n(mcc)', 'RTE\n(acc)']


def test_plot_schedule_warms_up_to_the_peak_then_decays_to_zero():
    ax = plots.plot_schedule(1e-3, total_steps=1000, warmup_steps=100)
    x, y = ax.get_lines()[0].get_data()
    assert y[0] == 0 and y[-1] == pytest.approx(0, abs=1e-12)
    assert x[np.argmax(y)] == pytest.approx(100, abs=3) and y.max() == pytest.approx(1e-3 * 0.9, rel=0.01)


def test_plot_history_draws_the_losses_and_the_accuracies():
    history = [dict(step=s, mlm_loss=5.0 - s / 100, disc_loss=0.4, replaced_rate=0.13, disc_auc=0.5 + s / 1000,
                    gen_acc=0.1, disc_precision=0.5, disc_recall=0.2) for s in (0, 50, 100)]
    fig = plots.plot_history(history)
    assert [ax.get_title() for ax in fig.axes] == ['generator MLM loss', 'discriminator loss minus the majority-class '
                                                   'baseline', 'accuracy, AUC']
    assert list(fig.axes[2].get_lines()[0].get_ydata()) == [0.5, 0.55, 0.6]


def test_plot_detections_colours_every_word_and_labels_the_flagged_ones():
    words = [Word('the', 0, 3, [1], 0.1), Word('chef', 4, 8, [2], 0.2), Word('of', 9, 11, [3], 0.88, flagged=True)]
    fig = plots.plot_detections([Detection('the chef of', words)])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ['the', 'chef', 'of', '0.88']  # one box per word, the flagged word's probability beneath it
    assert fig.axes[1].get_ylabel() == 'P(replaced)'


def test_describe_example_and_peek_step_show_one_example(tokenizer, capsys):
    from _utils.electra import ELECTRA, build_models
    ids = tokenizer('the cat sat on the mat', 'it was warm')
    example = {'input_ids': torch.tensor(ids['input_ids'] + [0] * 4),
               'token_type_ids': torch.tensor(ids['token_type_ids'] + [0] * 4)}
    plots.describe_example(example, tokenizer)
    out = capsys.readouterr().out
    assert out.startswith(f"{len(ids['input_ids'])} real tokens + 4 padding") and 'B: it was warm' in out
    torch.manual_seed(0)
    gen, disc = build_models('tiny', vocab_size=len(tokenizer))
    electra = ELECTRA(gen, disc, tokenizer.mask_token_id, tokenizer.all_special_ids, mask_prob=0.3)
    batch = {k: v.unsqueeze(0) for k, v in example.items()}
    table = plots.peek_step(electra, batch, tokenizer)
    assert list(table.columns) == ['original', 'discriminator sees', 'masked', 'replaced (label)', 'P(replaced)']
    assert table.original.tolist()[:3] == ['[CLS]', 'the', 'cat'] and table.masked.any()
    assert electra.training  # left as it was
