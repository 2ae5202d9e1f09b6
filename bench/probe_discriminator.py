"""Is the discriminator learning? Pretrain with a setting and measure, every few steps, on held-out text:

- `auc`: the discriminator's ROC AUC at telling the generator's replacements from original tokens (the step's own
  task, with masking and sampling as in training, dropout off);
- `probe`: its AUC when 15% of the words are replaced by uniformly random vocabulary tokens (the easiest case);
- `gen_acc`: the generator's accuracy at the masked positions.

`--replacements uniform|unigram` swaps the generator's samples for uniformly random tokens or tokens drawn by their
frequency in the corpus: what the discriminator learns when the replacements are easy, or as hard as a generator
that knows only word frequencies. This is how the demo's settings were searched (bench/RESULTS.md, issue 15).

    python bench/probe_discriminator.py                               # the demo's settings, 800 steps of 16 x 128
    python bench/probe_discriminator.py --lr 1e-3 --generator_hidden 32 --batch_size 32
    python bench/probe_discriminator.py --replacements unigram        # a frequency-only "generator"
"""
import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
HELD_OUT = ROOT.parent / 'shared' / 'data' / 'corpus' / 'enwiki2015' / 'enwiki2015_AA_29.txt'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--size', default='tiny')
    p.add_argument('--corpus', default='bundled', help='pretraining text')
    p.add_argument('--held_out', default=str(HELD_OUT) if HELD_OUT.exists() else 'bundled',
                   help='text to measure on (not trained on, unless it is the corpus)')
    p.add_argument('--steps', type=int, default=800)
    p.add_argument('--batch_size', type=int, default=16)
    p.add_argument('--max_length', type=int, default=128)
    p.add_argument('--lr', type=float, default=5e-4)
    p.add_argument('--mask_prob', type=float, default=0.15)
    p.add_argument('--warmup_steps', type=int, default=100)
    p.add_argument('--generator_hidden', type=int, default=None, help="generator width (default: the size's)")
    p.add_argument('--dropout', type=float, default=None, help="dropout of both networks (default: 0.1, the paper's)")
    p.add_argument('--position', default='absolute', help='absolute, tupe-a, tupe-r or rope')
    p.add_argument('--vocab_size', type=int, default=0, help='0: the bundled BERT vocabulary; N: a WordPiece '
                   'vocabulary of N tokens trained on --corpus (pretrain.py --tokenizer train)')
    p.add_argument('--hidden', type=int, default=None, help="discriminator width (default: the size's)")
    p.add_argument('--layers', type=int, default=None, help="depth of both networks (default: the size's)")
    p.add_argument('--heads', type=int, default=None, help="discriminator attention heads (default: the size's)")
    p.add_argument('--compile', default='none', help="torch.compile mode of the step (pretrain.py's --compile)")
    p.add_argument('--threads', type=int, default=0, help='torch threads; 0: all cores')
    p.add_argument('--minutes', type=float, default=0, help='stop after this many minutes of training (measurements '
                   'not counted); 0: run --steps')
    p.add_argument('--eval_minutes', default='', help='also measure when training time passes these minutes, '
                   'e.g. 2,5,10')
    p.add_argument('--replacements', default='generator', choices=['generator', 'uniform', 'unigram'])
    p.add_argument('--eval_every', type=int, default=100)
    p.add_argument('--eval_rows', type=int, default=256)
    p.add_argument('--precision', default='auto')
    p.add_argument('--seed', type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import torch
    from fastai.callback.core import Callback, CancelFitException
    from sklearn.metrics import roc_auc_score

    from _utils import electra as E
    from _utils.learner import pick_precision, seed_everything, seed_masking
    from _utils.pretraining import build_electra, pretraining_learner, step_dataloader
    from _utils.text import load_tokenizer, pretraining_examples, train_tokenizer

    if args.threads: torch.set_num_threads(args.threads)
    shape = dict(E.SIZES[args.size])
    if args.hidden: shape.update(embedding_size=args.hidden, hidden_size=args.hidden, intermediate_size=4 * args.hidden)
    if args.layers: shape.update(num_hidden_layers=args.layers)
    if args.heads: shape.update(num_attention_heads=args.heads)
    if args.generator_hidden:
        g = args.generator_hidden
        shape['generator'] = dict(hidden_size=g, num_attention_heads=max(1, g // 64), intermediate_size=4 * g)
    E.SIZES[args.size] = shape
    seed_everything(args.seed)
    tokenizer = train_tokenizer(args.corpus, args.vocab_size) if args.vocab_size else load_tokenizer('bundled')
    examples = pretraining_examples(args.corpus, tokenizer, args.max_length, seed=args.seed, verbose=False)
    held = pretraining_examples(args.held_out, tokenizer, args.max_length, seed=args.seed, verbose=False)
    held = held[len(held) - args.eval_rows:] if args.held_out == args.corpus else held[:args.eval_rows]
    electra = build_electra(args.size, tokenizer, max_length=args.max_length, position=args.position,
                            mask_prob=args.mask_prob)
    if args.dropout is not None:
        for module in electra.modules():
            if isinstance(module, torch.nn.Dropout): module.p = args.dropout
    # ids below are [PAD], [unused], [CLS], [SEP], [MASK] and other specials in the BERT vocab; a trained one has 5
    first_word = 5 if args.vocab_size else 999
    if args.replacements != 'generator':
        if args.replacements == 'unigram':
            counts = torch.bincount(examples[:]['input_ids'].long().flatten(), minlength=len(tokenizer)).float()
        else:
            counts = torch.ones(len(tokenizer))
        counts[:first_word] = 0
        probs = counts / counts.sum()
        E.sample_from_softmax = lambda logits, *a, **k: torch.multinomial(
            probs, logits.shape[:-1].numel(), replacement=True).view(logits.shape[:-1])

    @torch.no_grad()
    def measure():
        electra.eval()
        g = torch.Generator().manual_seed(123)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(123)
            ids, types = held['input_ids'].long(), held['token_type_ids'].long()
            auc, probe, acc = [], [], []
            for i in range(0, len(ids), 64):
                x, t = ids[i:i + 64], types[i:i + 64]
                out = electra(x, t)
                real = out.attention_mask.bool()
                auc.append(roc_auc_score(out.is_replaced[real].numpy(), out.disc_logits[real].float().numpy()))
                w = out.masked_weight
                acc.append(float(((out.mlm_logits.argmax(-1) == out.masked_ids).float() * w).sum() / w.sum()))
                swap = (torch.rand(x.shape, generator=g) < 0.15) & real & (x >= first_word)
                x2 = torch.where(swap, torch.randint(first_word, len(tokenizer), x.shape, generator=g), x)
                logits = electra.discriminator(input_ids=x2, attention_mask=out.attention_mask, token_type_ids=t).logits
                probe.append(roc_auc_score((x2 != x)[real].numpy(), logits[real].float().numpy()))
        electra.train()
        return dict(auc=float(np.mean(auc)), probe=float(np.mean(probe)), gen_acc=float(np.mean(acc)))

    marks = sorted(float(m) * 60 for m in args.eval_minutes.split(',') if m.strip())

    class Measure(Callback):
        """Measures every `eval_every` steps and when training time passes a mark; the clock stops meanwhile."""
        order = 100

        def after_batch(self):
            nonlocal t0
            step, trained = self.iter + 1, time.time() - t0
            passed = marks and trained >= marks[0]
            while marks and trained >= marks[0]: marks.pop(0)
            done = step == args.steps or (args.minutes and trained >= args.minutes * 60)
            if step % args.eval_every and not done and not passed: return
            t_eval = time.time()
            row = dict(step=step, **measure(), seconds=trained)
            print(json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
            t0 += time.time() - t_eval
            if done: raise CancelFitException()

    seed_masking(args.seed)
    learn = pretraining_learner(electra, step_dataloader(examples, args.batch_size, args.steps, seed=args.seed),
                                lr=args.lr, total_steps=args.steps, warmup_steps=args.warmup_steps,
                                precision=pick_precision(args.precision, torch.device('cpu')),
                                extra_cbs=[Measure()], progress_every=10 ** 9, compile=args.compile)
    print(json.dumps(vars(args)), flush=True)
    t0 = time.time()
    with learn.no_bar(): learn.fit(1)


if __name__ == '__main__':
    main()
