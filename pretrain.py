#!/usr/bin/env python
# Generated from Pretrain.ipynb by `make scripts`: edit the notebook, not this file.

# # Pretrain ELECTRA from scratch
# 
# ELECTRA (Clark et al., ICLR 2020) trains a small **generator** (a masked language model) and a
# **discriminator** together: the generator fills in masked tokens, the discriminator tells, for every token,
# whether it is the original or a replacement. The discriminator is the model you keep and finetune.
# 
# This notebook is the source of `pretrain.py` (regenerate it with `make scripts`, which runs nbconvert): the
# cells tagged `notebook-only` are pictures and peeks that stay here. The numbers of the recipe are those of
# `RECIPE.md` (in this folder) throughout; the logic lives in `_utils/`.

import os
import warnings
from dataclasses import dataclass

warnings.filterwarnings('ignore', message='.*torch.jit.script.*is deprecated')  # raised inside a dependency

from _utils.callbacks import Checkpointer, GracefulStop, NonFiniteLoss
from _utils.checkpoint import (find_checkpoint, import_huggingface, load_checkpoint, load_weights, make_checkpoint,
                               own_pair_named, restart_point, restore_training_state, tokenizer_from_checkpoint)
from _utils.config import NOT_NEGATIVE, POSITIVE, Config, option, within
from _utils.electra import MASK_PROB, SIZES, step_metrics
from _utils.errors import ensure_writable
from _utils.files import claim_run, project_path, say
from _utils.learner import (init_distributed, one_process_at_a_time, pick_device, pick_precision, process_rank,
                            seed_everything, seed_masking)
from _utils.loggers import LOGGERS, MetricsLogger, parse_loggers
from _utils.objectives import OBJECTIVES, objectives_help
from _utils.positions import POSITIONS
from _utils.pretraining import (COMPILE_MODES, build_electra, describe_models, last_batch_auc, pick_compile,
                                pretraining_learner, split_held_out, step_dataloader)
from _utils.text import OVERFLOW, load_tokenizer, pretraining_examples, train_tokenizer


# ## 1. Configuration
# Plain values with the paper's defaults. A **preset** sets a group of them: `demo` (the default: a tiny model on
# the bundled Wikipedia sample, minutes on a laptop CPU) or the paper's runs on OpenWebText. Any field can be
# overridden from the command line, e.g. `python pretrain.py --size small --max_steps 2000`; `--help` lists them.
# `--objective` switches to the comparisons of the paper's Table 5 (`electra-15`, `replace-mlm`, `all-tokens-mlm`,
# `mlm` for BERT);
# `python bench/learning.py` pretrains them at equal compute and finetunes each on GLUE. `--position tupe-r`
# (or `tupe-a`) puts TUPE's positional attention in place of the position embeddings (RECIPE.md, "TUPE"), `rope`
# rotary position embeddings.
# `--tokenizer train` trains a WordPiece vocabulary on the corpus (another language, say); `--init_from`
# continues Hugging Face ELECTRA models; `--pair file.py:function` trains a generator and discriminator of your own.

@dataclass
class Model(Config):
    """What is pretrained, and on what text."""
    preset: str = option('demo', 'a group of settings (see below); fields given on the command line win',
                         choices=['demo', 'cpu', 'paper-small', 'paper-base', 'paper-large', 'none'])
    size: str = option('small', 'model size (RECIPE.md "Model sizes"); tiny is this project\'s quick CPU size',
                       choices=list(SIZES))
    objective: str = option('electra', "what to pretrain (the paper's, or a comparison of its Table 5): "
                            + objectives_help(), choices=list(OBJECTIVES))
    position: str = option('absolute', "where a token is: 'absolute' (the paper's position embeddings), 'tupe-a' "
                           "(TUPE's untied positional attention), 'tupe-r' (TUPE-A + relative-position bias), "
                           "'rope' (rotary: queries and keys turned by their position) or 'alibi' (scores minus a "
                           "fixed slope per head times the distance)", choices=list(POSITIONS))
    pair: str = option('', "your own generator and discriminator: 'file.py:function' or 'module:function', called as "
                       'function(vocab_size, max_length) -> (generator, discriminator) (README); empty: ELECTRA')
    init_from: str = option('', 'continue pretraining Hugging Face ELECTRA models: a folder holding generator/ and '
                            "discriminator/, or 'generator,discriminator' (folders or hub ids); its tokenizer too")
    corpus: str = option('bundled', "'bundled' (datasets/wiki_sample), a .txt file or folder of them, or a Hugging "
                         "Face dataset name[:config], e.g. Skylion007/openwebtext")
    tokenizer: str = option('bundled', "'bundled' (BERT uncased, 30,522 tokens), a vocab.txt, a tokenizer folder, a "
                            "hub id, or 'train': a WordPiece vocabulary trained on --corpus (cached; a copy goes to "
                            "the run's log folder)")
    vocab_size: int = option(30_522, "with --tokenizer train: tokens in the vocabulary (BERT's 30,522)")
    lowercase: bool = option(True, 'with --tokenizer train: lower-case the text, as BERT uncased does')
    strip_accents: bool | None = option(None, 'with --tokenizer train: remove accents (é -> e); none: as --lowercase, '
                                        'as BERT does (Spanish usually keeps them: --strip_accents false)')


# The recipe. The defaults are the paper's ELECTRA-Small; the `cpu` preset (and the `demo`, which is it on the bundled
# sample) is this project's CPU recipe, chosen by measurement: the printed config marks every field where it
# departs from the paper (`<- the paper: ...`). Each field's rule (`valid=`) is checked as the config is built.

@dataclass
class Training(Model):
    """How it trains: the recipe (RECIPE.md), and the presets."""
    max_steps: int = option(1_000_000, 'optimizer steps to train for', valid=POSITIVE)
    batch_size: int = option(128, 'global batch size (split across processes)', valid=POSITIVE)
    max_length: int = option(128, 'tokens per example', valid=within(8, 512, why=' (the model has 512 positions)'))
    overflow: str = option('drop', "a text line running past an example's end: 'drop' its rest (the official "
                           "builder) or 'carry' it into the next example (no text lost; with the CPU recipe the "
                           "generator learned faster, the discriminator far slower: bench/RESULTS.md)",
                           choices=list(OVERFLOW))
    lr: float = option(5e-4, 'peak learning rate', valid=POSITIVE)
    warmup_steps: int = option(10_000, 'linear warmup steps (warmup multiplies the linear decay)', valid=NOT_NEGATIVE)
    mask_prob: float = option(MASK_PROB, 'fraction of tokens masked (0.25 for Large)', valid=within(0, 1, '()'))
    weight_decay: float = option(0.01, 'decoupled weight decay, not on LayerNorm or bias')
    adam_eps: float = option(1e-6, 'Adam epsilon (Adam without bias correction)')
    clip: float = option(1.0, 'global gradient-norm clip, on unscaled gradients')
    dropout: float = option(0.1, "dropout of both networks built here (RECIPE.md: 0.1; not --pair / --init_from's)",
                            valid=within(0, 1, '[)'))
    generator_weight: float = option(1.0, 'weight of the generator\'s MLM loss')
    discriminator_weight: float = option(50.0, 'weight of the discriminator\'s loss')
    seed: int = option(0, 'random seed (data order, masking, initialisation)')

    # The CPU recipe, chosen by measurement (bench/RESULTS.md, "A CPU recipe"): what taught the discriminator fastest
    # per CPU-minute with ELECTRA's objective. The printed config marks where it departs from the paper. Its step is
    # compiled (torch.compile, inductor): 1.2-1.3x the eager step's speed at 64 x 64, for 20-40 s of compiling.
    CPU = dict(size='tiny', position='rope', tokenizer='train', vocab_size=8192, batch_size=64, max_length=64,
               mask_prob=0.25, lr=2e-3, warmup_steps=300, dropout=0.0, max_steps=4000, compile='default')
    PRESETS = {
        'demo': dict(CPU, corpus='bundled'),  # the CPU recipe for about 10 minutes on the bundled Wikipedia sample
        'cpu': CPU,
        'paper-small': dict(size='small', corpus='Skylion007/openwebtext', max_steps=1_000_000, batch_size=128,
                            max_length=128, lr=5e-4, warmup_steps=10_000),
        'paper-base': dict(size='base', corpus='Skylion007/openwebtext', max_steps=766_000, batch_size=256,
                           max_length=512, lr=2e-4, warmup_steps=10_000),
        'paper-large': dict(size='large', corpus='Skylion007/openwebtext', max_steps=400_000, batch_size=2048,
                            max_length=512, lr=2e-4, warmup_steps=10_000, mask_prob=0.25),
        'none': dict(),
    }
    PAPER_PRESET = 'paper-small'  # the printed config marks the recipe's fields that differ from it
    RECIPE_FIELDS = ('size', 'tokenizer', 'vocab_size', 'max_steps', 'batch_size', 'max_length', 'overflow', 'lr',
                     'warmup_steps', 'mask_prob', 'weight_decay', 'adam_eps', 'clip', 'dropout', 'generator_weight',
                     'discriminator_weight', 'objective', 'position')


# Where it runs and what it writes: the run's name, device and precision, logs, checkpoints (and resuming from one),
# the data cache, and the held-out examples the verdict at the end reads.

@dataclass
class MyConfig(Training):
    """Pretrain an ELECTRA generator and discriminator on a text corpus (defaults: RECIPE.md, ELECTRA-Small)."""
    run_name: str = option('', 'name for checkpoints and logs; empty: the preset (or size) name')
    precision: str = option('auto', 'auto: bf16 where the hardware is fast at it, else fp16 (GPU) / fp32 (CPU)',
                            choices=['auto', 'fp32', 'bf16', 'fp16'])
    compile: str = option('auto', 'torch.compile mode for the step; auto: reduce-overhead (CUDA graphs) on one GPU, '
                          'default on several, none on CPUs (the CPU recipe: default); falls back to eager if '
                          'compiling fails',
                          choices=list(COMPILE_MODES))
    device: str = option('auto', 'auto, cpu, cuda or cuda:N')
    logger: str = option('csv,tensorboard', f"comma-separated loggers among {', '.join(LOGGERS)}, or none")
    log_every: int = option(50, 'log metrics every N steps', valid=POSITIVE)
    checkpoint_fractions: str = option('0.0625,0.125,0.25,0.5,1', 'save checkpoints at these fractions of the run')
    checkpoint_dir: str = option('checkpoints/pretrain', 'where checkpoints go (relative paths: from the project '
                                 'folder)')
    log_dir: str = option('logs/pretrain', 'where logs go, a sub-folder per run (relative: from the project folder)')
    data_cache: str = option('datasets/cache', 'where tokenized, packed examples are cached (relative: from the '
                             'project folder)')
    resume: str = option('', "continue a run exactly: 'latest' (newest checkpoint in checkpoint_dir, of --run_name "
                         "and --seed if given) or a checkpoint path; the run's own settings are used, command-line fields win. "
                         'Under torchrun --max-restarts, a restarted run continues from its newest checkpoint')
    save_every: int = option(1000, 'also save a rolling checkpoint every N steps (0: never); the newest keep_last stay')
    keep_last: int = option(2, 'how many rolling checkpoints to keep')
    skip_nonfinite: bool = option(False, 'skip steps whose loss is nan/inf instead of stopping the run')
    num_workers: int = option(-1, 'data loader worker processes; -1: none on CPU, 4 on GPU')
    num_proc: int = option(0, 'processes that tokenize the corpus; 0: one per core')
    held_out: int = option(256, 'examples of the corpus set aside, never trained on, to measure the discriminator '
                           'and the generator on at the end (at most a tenth of the corpus; 0: none)')

    def validate(self):
        super().validate()  # each field's choices and rule (`valid=`)
        self.check(not (self.pair and self.init_from), 'give --pair or --init_from, not both')
        self.check(OBJECTIVES[self.objective].detects or self.discriminator_weight == type(self).discriminator_weight,
                   f'--discriminator_weight weighs the discriminator\'s loss, which --objective {self.objective} does '
                   'not have (its model\'s MLM loss has weight 1); leave it out')
        parse_loggers(self.logger)
        self.check(all(0 < f <= 1 for f in self.fractions), '--checkpoint_fractions must be numbers in (0, 1]')
        if not self.run_name: self.run_name = self.preset if self.preset != 'none' else self.size

    @property
    def loggers(self): return parse_loggers(self.logger)

    @property
    def fractions(self):
        try: return [float(f) for f in self.checkpoint_fractions.split(',') if f.strip()]
        except ValueError: return [-1.0]


# The config: defaults < preset < `$ELECTRA_ARGS` < the command line. `--resume` takes the saved run's settings,
# with the fields given on the command line on top.

cfg = MyConfig.from_cli()
if (cfg.pair or cfg.init_from) and 'position' not in cfg.given:
    cfg.position = 'absolute'  # your own pair, or imported models, keep the positions they have (not the preset's)
cfg.resume = cfg.resume or restart_point(project_path(cfg.checkpoint_dir), cfg.run_name, cfg.seed)  # torchrun
resume_from = None
if cfg.resume:  # the saved run's settings, plus whatever the command line sets
    resume_from = load_checkpoint(find_checkpoint(cfg.resume, project_path(cfg.checkpoint_dir),
                                                  cfg.run_name if 'run_name' in cfg.given else None,
                                                  cfg.seed if 'seed' in cfg.given else None))
    cfg = MyConfig.from_saved(resume_from['config'], {**cfg.given, 'resume': cfg.resume})
    own_pair_named(resume_from, cfg.given.get('pair'))  # a pair of your own is rebuilt only when you name it again
if int(os.environ.get("RANK", 0)) == 0: print(cfg)


# ## 2. Data: corpus → tokens → packed examples
# Lines are tokenized and packed the way the official builder does (RECIPE.md, "Pretraining data"): examples
# never cross documents, 10% hold one segment only, 5% get a shorter random target length; a line that runs past the
# example's end loses its rest (or with `--overflow carry` starts the next one). The result is cached
# under `datasets/cache/`, keyed by corpus, tokenizer and length. With `--tokenizer train`, a WordPiece vocabulary of
# `--vocab_size` tokens is first trained on the corpus (once: it is cached in `datasets/cache/tokenizers/`) and saved
# in the run's log folder; a resumed run takes its vocabulary from the checkpoint.

rank, world_size = process_rank()  # one process, unless started by torchrun / accelerate
run_id = f'{cfg.run_name}_seed{cfg.seed}'
log_dir = project_path(cfg.log_dir) / run_id
claim = None
if rank == 0:  # fail now, not after hours of training, if the outputs cannot be written or are another run's
    ensure_writable(project_path(cfg.checkpoint_dir), '--checkpoint_dir')
    ensure_writable(project_path(cfg.log_dir), '--log_dir')
    claim = claim_run(project_path(cfg.checkpoint_dir), run_id, 'wait for it to end (or stop it), or give this run '
                      'another --run_name or --seed')
seed_everything(cfg.seed)
imported = import_huggingface(cfg.init_from) if cfg.init_from else None  # (generator, discriminator, tokenizer)
with one_process_at_a_time(project_path(cfg.data_cache) / '.build.lock', world_size):  # the first builds them
    if imported and imported[2] is not None and 'tokenizer' not in cfg.given:  # the models' own vocabulary
        tokenizer = imported[2]
    elif cfg.tokenizer != 'train':
        tokenizer = load_tokenizer(cfg.tokenizer)
    elif resume_from:  # the vocabulary the run was trained with, whatever the cache holds now
        tokenizer = tokenizer_from_checkpoint(resume_from)
    else:  # trained once, then taken from the cache
        tokenizer = train_tokenizer(cfg.corpus, cfg.vocab_size, cfg.lowercase, cfg.strip_accents,
                                    cache_root=project_path(cfg.data_cache))
    if cfg.tokenizer == 'train' and rank == 0:
        tokenizer.save_pretrained(str(log_dir / 'tokenizer'))
        say(f'Tokenizer: {len(tokenizer):,} WordPiece tokens trained on {cfg.corpus}, saved in '
              f'{log_dir / "tokenizer"}')
    examples = pretraining_examples(cfg.corpus, tokenizer, cfg.max_length, seed=cfg.seed, overflow=cfg.overflow,
                                    num_proc=cfg.num_proc or None, cache_root=project_path(cfg.data_cache))
held_out, examples = split_held_out(examples, cfg.held_out)  # the corpus's last examples: never trained on
print(f'{len(examples):,} examples of up to {cfg.max_length} tokens (+ {len(held_out):,} held out); vocabulary '
      f'{len(tokenizer):,}')


# ## 3. The generator and the discriminator
# Both are Hugging Face ELECTRA models; they share the whole embedding block, and the generator's output
# layer is tied to the word embeddings. The generator is a fraction of the discriminator's width, same depth.

# Several processes: the process group starts now, after the data (see `one_process_at_a_time`)
_, _, ddp_device = init_distributed()
electra = build_electra(cfg.size, tokenizer, mask_prob=cfg.mask_prob, max_length=cfg.max_length,
                        objective=cfg.objective, position=cfg.position, pair=cfg.pair,
                        init_from=imported[:2] if imported else None, dropout=cfg.dropout)
if resume_from: load_weights(electra, resume_from, tokenizer)
print(describe_models(electra, cfg.size))


# One step on a batch, looked at token by token: the masked input the generator sees, its samples, and the
# discriminator's labels (a sample equal to the original counts as *real*).

# ## 4. Training: a fastai `Learner` counted in steps
# Adam without bias correction, warmup × linear decay, clipping at 1.0, the chosen precision, checkpoints at
# fractions of the run and metrics every `log_every` steps.
# On a GPU the step is compiled (`--compile`: CUDA graphs on one GPU), and nothing in it waits for the GPU: the
# metrics are summed on the device and read back only when they are logged. On a CPU only the CPU recipe (the demo)
# compiles it (1.2-1.3× faster at its 64 × 64; without a C++ compiler it runs eagerly, saying so).
# On a CPU, dropout makes its masks 2-4× faster than torch's `bernoulli_` (`_utils/speedups.py`: the same
# probability and scaling), and freed memory stays in the process instead of being paged in again every step.

seed_masking(cfg.seed, rank, world_size)
device = ddp_device or pick_device(cfg.device)
precision = pick_precision(cfg.precision, device)
compile_mode = pick_compile(cfg.compile, device, world_size)
num_workers = cfg.num_workers if cfg.num_workers >= 0 else (4 if device.type == 'cuda' else 0)
start_step = resume_from['step'] if resume_from else 0
train_dl = step_dataloader(examples, cfg.batch_size, cfg.max_steps, seed=cfg.seed, num_workers=num_workers,
                           start_step=start_step, rank=rank, world_size=world_size)


def checkpoint(learn):
    return make_checkpoint(electra, tokenizer, cfg.to_dict(), learn.step, cfg.max_steps, optimizer=learn.opt.opt)


checkpointer = Checkpointer(project_path(cfg.checkpoint_dir), cfg.run_name, cfg.seed, cfg.max_steps, checkpoint,
                            cfg.fractions, rank=rank, save_every=cfg.save_every, keep_last=cfg.keep_last)
metrics = MetricsLogger(log_dir, step_metrics, cfg.log_every, cfg.loggers, cfg.batch_size * cfg.max_length,
                        run_name=run_id, config=cfg.to_dict(), total_steps=cfg.max_steps, rank=rank,
                        snapshot_fn=last_batch_auc)
callbacks = [checkpointer, metrics, GracefulStop(checkpointer, world_size),
             NonFiniteLoss(skip=cfg.skip_nonfinite, world_size=world_size)]
learn = pretraining_learner(electra, train_dl, lr=cfg.lr, total_steps=cfg.max_steps, warmup_steps=cfg.warmup_steps,
                            weight_decay=cfg.weight_decay, adam_eps=cfg.adam_eps, clip=cfg.clip, precision=precision,
                            device=device, generator_weight=cfg.generator_weight,
                            discriminator_weight=cfg.discriminator_weight, start_step=start_step,
                            extra_cbs=callbacks, rank=rank, world_size=world_size, compile=compile_mode,
                            metrics=metrics, progress_every=cfg.log_every)
if resume_from: restore_training_state(learn, resume_from, rank, world_size)  # optimizer, random generators
if rank == 0:
    print(f'Training {cfg.max_steps:,} steps of {cfg.batch_size} x {cfg.max_length} tokens on {device} ({precision}'
          + (f', torch.compile {compile_mode}' if compile_mode != 'none' else '') + ')'
          + (f', {world_size} processes' if world_size > 1 else '') + (f', from step {start_step:,}' if start_step else ''))


learn.fit(1)
if getattr(learn, 'stop_reason', None): raise SystemExit(f'Stopped: {learn.stop_reason}')


# ## 5. Where things went, and did it learn?
# The generator's MLM loss should fall well below its start and its accuracy rise; the discriminator's loss should
# fall below the loss of a guesser that always says "original" (the entropy of the replaced-token rate), and its
# AUC tells how well it ranks replaced tokens above original ones: "learned" from 0.80, "learning" from 0.60, "not
# yet learning" below. Logged values are averages over the steps since the previous log (the AUC: the last batch);
# the verdict reads the AUC and the generator's accuracy measured at the end on the held-out examples (`--held_out`),
# text the models never trained on.
# At the demo's budget both learn, the discriminator only part of the way: its held-out AUC ends near 0.62-0.66
# ("learning, not there yet") while its last training batches read about 0.70. Once the generator knows word
# frequencies, its replacements are frequent words that only context gives away, and a tiny model learns context
# slowly: the hour-scale study's ELECTRA needed about 57M tokens for a held-out AUC of 0.80, several times the demo's
# 16M (`bench/RESULTS.md`, "32-token examples for the demo"). `bench/probe_discriminator.py` measures it for other
# settings.

from _utils.pretraining import held_out_metrics, learning_summary
if rank == 0:
    measured = held_out_metrics(electra, held_out, precision=precision) if len(held_out) else None
    print(learning_summary(metrics.history, measured, len(held_out)))
    say(f'Checkpoints: {", ".join(str(p) for p in checkpointer.saved) or "none"}')
    say(f'Logs: {log_dir}/ (metrics.csv; TensorBoard: `tensorboard --logdir {log_dir.parent}`)')
    claim.release()  # the run's folder is free for another run

