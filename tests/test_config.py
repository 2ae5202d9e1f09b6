"""Configuration: defaults, presets, ELECTRA_ARGS and command-line overrides, with clear errors."""
from dataclasses import dataclass
from typing import Optional

import pytest

from _utils.config import Config, option
from _utils.errors import UserError


@dataclass
class DemoConfig(Config):
    """A demo pretraining script."""
    size: str = option('tiny', 'model size', choices=['tiny', 'small', 'base', 'large'])
    max_steps: int = option(100, 'optimizer steps')
    lr: float = option(5e-4, 'peak learning rate')
    fp16: bool = option(False, 'train in fp16')
    seed: Optional[int] = option(None, 'random seed (none: random)')
    preset: Optional[str] = option(None, 'a group of settings, see below')

    PRESETS = {'paper-small': dict(size='small', max_steps=1_000_000, lr=5e-4),
               'paper-base': dict(size='base', max_steps=766_000, lr=2e-4)}


@pytest.fixture(autouse=True)
def no_env_args(monkeypatch):
    monkeypatch.delenv('ELECTRA_ARGS', raising=False)


def test_defaults_without_arguments():
    assert DemoConfig.from_cli([]) == DemoConfig()
    assert DemoConfig.from_cli([]).to_dict() == dict(size='tiny', max_steps=100, lr=5e-4, fp16=False, seed=None,
                                                     preset=None)


def test_space_separated_overrides():
    cfg = DemoConfig.from_cli(['--max_steps', '2000', '--size', 'small'])
    assert (cfg.max_steps, cfg.size) == (2000, 'small')
    assert isinstance(cfg.max_steps, int)


def test_equals_overrides():
    assert DemoConfig.from_cli(['--lr=1e-3']).lr == 1e-3


def test_bare_boolean_flag_means_true():
    assert DemoConfig.from_cli(['--fp16']).fp16 is True
    assert DemoConfig.from_cli(['--fp16', '--max_steps', '5']).fp16 is True


def test_boolean_with_explicit_value():
    assert DemoConfig.from_cli(['--fp16', 'false']).fp16 is False
    assert DemoConfig.from_cli(['--fp16=yes']).fp16 is True


def test_int_in_scientific_notation():
    assert DemoConfig.from_cli(['--max_steps', '1e6']).max_steps == 1_000_000


def test_optional_field_takes_none():
    assert DemoConfig.from_cli(['--seed', '3']).seed == 3
    assert DemoConfig.from_cli(['--seed', 'none']).seed is None


def test_dashes_in_names_are_accepted():
    assert DemoConfig.from_cli(['--max-steps', '7']).max_steps == 7


def test_preset_sets_its_fields():
    cfg = DemoConfig.from_cli(['--preset', 'paper-small'])
    assert (cfg.size, cfg.max_steps, cfg.lr) == ('small', 1_000_000, 5e-4)


def test_explicit_flags_win_over_the_preset_in_any_order():
    before = DemoConfig.from_cli(['--max_steps', '20', '--preset', 'paper-base'])
    after = DemoConfig.from_cli(['--preset', 'paper-base', '--max_steps', '20'])
    assert before == after
    assert (after.size, after.lr, after.max_steps) == ('base', 2e-4, 20)


def test_electra_args_environment_variable_is_read(monkeypatch):
    monkeypatch.setenv('ELECTRA_ARGS', '--max_steps 7 --lr 1e-3')
    cfg = DemoConfig.from_cli([])
    assert (cfg.max_steps, cfg.lr) == (7, 1e-3)


def test_command_line_wins_over_electra_args(monkeypatch):
    monkeypatch.setenv('ELECTRA_ARGS', '--max_steps 7 --lr 1e-3')
    cfg = DemoConfig.from_cli(['--max_steps', '9'])
    assert (cfg.max_steps, cfg.lr) == (9, 1e-3)


def test_misspelled_field_names_the_closest_one():
    with pytest.raises(UserError, match='unknown field --max_step; did you mean --max_steps'):
        DemoConfig.from_cli(['--max_step', '2000'])


def test_build_rejects_unknown_keyword_with_the_closest_field():
    with pytest.raises(UserError, match='--max_steps'):
        DemoConfig.build(max_step=5)


def test_help_text_lists_every_field_with_default_and_help():
    text = DemoConfig.help_text('demo.py')
    for line, default, help in [('--size', "'tiny'", 'model size'), ('--max_steps', '100', 'optimizer steps'),
                                ('--lr', '0.0005', 'peak learning rate'), ('--fp16', 'False', 'train in fp16'),
                                ('--seed', 'None', 'random seed'), ('--preset', 'None', 'a group of settings')]:
        at = text.index(line + ' ')
        assert f'default {default}' in text[at:at + 200] and help in text[at:at + 200], line
    assert 'tiny | small | base | large' in text
    assert 'paper-small' in text and 'ELECTRA_ARGS' in text


def test_help_flag_prints_help_and_exits_0(capsys):
    with pytest.raises(SystemExit) as e:
        DemoConfig.from_cli(['--help'])
    assert e.value.code == 0
    assert '--max_steps' in capsys.readouterr().out


@pytest.mark.parametrize('args, message', [
    (['--warmup_fraction', '0.1'], 'unknown field --warmup_fraction'),  # unknown field
    (['small'], 'unexpected argument'),  # positional argument
    (['--max_steps', 'lots'], "--max_steps expects an int, got 'lots'"),  # bad int
    (['--max_steps', '2.5e0'], '--max_steps expects an int'),  # non integer value for an int field
    (['--lr=fast'], "--lr expects a float, got 'fast'"),  # bad float
    (['--fp16', 'maybe'], '--fp16 expects a bool'),  # bad boolean
    (['--max_steps'], '--max_steps needs a value'),  # missing value
    (['--size', 'smal'], "did you mean 'small'"),  # choice
    (['--preset', 'paper-smal'], "did you mean 'paper-small'"),  # unknown preset
])
def test_bad_command_lines_are_user_errors(args, message):
    with pytest.raises(UserError, match=message):
        DemoConfig.from_cli(args)


@dataclass
class PaperConfig(Config):
    size: str = option('small', 'model size')
    lr: float = option(5e-4, 'peak learning rate')
    run_name: str = option('', 'not part of the recipe')
    preset: Optional[str] = option(None, 'a group of settings')

    PRESETS = {'paper': dict(size='small'), 'cpu': dict(size='tiny', lr=2e-3, run_name='x')}
    PAPER_PRESET = 'paper'
    RECIPE_FIELDS = ('size', 'lr')


def test_the_printed_config_marks_where_the_recipe_departs_from_the_paper():
    text = str(PaperConfig.from_cli(['--preset', 'cpu']))
    assert "size                   'tiny'   <- the paper: 'small'" in text
    assert 'lr                     0.002   <- the paper: 0.0005' in text
    assert "run_name               'x'\n" in text                    # not a recipe field: not marked
    assert '(2 setting(s) marked "<-" depart from the paper\'s paper recipe' in text
    assert '<-' not in str(PaperConfig.from_cli(['--preset', 'paper']))
