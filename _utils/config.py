"""Configuration: a dataclass of plain values (each with its help text), presets, and command-line overrides.

A script holds `class MyConfig(Config)` with its fields; `MyConfig.from_cli()` applies, in order,
the class defaults, the chosen preset, the environment variable ELECTRA_ARGS, then the command line:

    python pretrain.py --size small --max_steps 20         # fields as flags
    python pretrain.py --preset paper-small                # a preset sets a group of fields
    python pretrain.py --help                              # every field, its default and meaning
"""
import dataclasses
import os
import shlex
import sys
import typing

from .errors import UserError, did_you_mean, install_excepthook


def option(default, help, choices=None, valid=None):
    """A config field with its help text, and what `validate` checks: its allowed values (`choices`) or a rule
    (`valid`: `POSITIVE`, `NOT_NEGATIVE`, `within(...)`; None passes)."""
    return dataclasses.field(default=default, metadata={'help': help, 'choices': choices, 'valid': valid})


def rule(says, ok):
    """A check for `option(valid=...)`: `ok(value)` must hold, else '--field <says>, got <value>'."""
    return says, ok


POSITIVE = rule('must be positive', lambda v: v > 0)
NOT_NEGATIVE = rule('must be >= 0', lambda v: v >= 0)


def within(low, high, brackets='[]', why=''):
    """A value in an interval, e.g. within(0, 1, '[)') for [0, 1); `why` is added to the message."""
    above = (lambda v: v >= low) if brackets[0] == '[' else (lambda v: v > low)
    below = (lambda v: v <= high) if brackets[1] == ']' else (lambda v: v < high)
    return rule(f'must be in {brackets[0]}{low:g}, {high:g}{brackets[1]}{why}', lambda v: above(v) and below(v))


class Config:
    """Base of a script's `MyConfig` dataclass. Subclasses define `PRESETS = {name: {field: value}}`, and may name
    the fields of the paper's recipe (`RECIPE_FIELDS`) and the preset that is the paper's (`PAPER_PRESET`): the
    printed config then marks every recipe field whose value departs from the paper's."""
    PRESETS: typing.ClassVar[dict] = {}
    RECIPE_FIELDS: typing.ClassVar[tuple] = ()
    PAPER_PRESET: typing.ClassVar[str | None] = None

    # -- introspection -------------------------------------------------------------------------------------------
    @classmethod
    def field_names(cls):
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self):
        return dataclasses.asdict(self)

    def __str__(self):
        paper = self.paper_values()
        departs = {k: paper[k] for k in self.RECIPE_FIELDS if getattr(self, k) != paper[k]}
        lines = [f'  {k:<22} {v!r}' + (f'   <- the paper: {departs[k]!r}' if k in departs else '')
                 for k, v in self.to_dict().items()]
        if departs:
            lines.append(f'  ({len(departs)} setting(s) marked "<-" depart from the paper\'s {self.PAPER_PRESET} '
                         'recipe, RECIPE.md)')
        return '\n'.join(lines)

    @classmethod
    def paper_values(cls):
        """Every field's value in the paper's recipe: the defaults, under `PAPER_PRESET` if there is one."""
        values = {f.name: f.default for f in dataclasses.fields(cls)}
        if cls.PAPER_PRESET: values.update(cls.PRESETS[cls.PAPER_PRESET])
        return values

    # -- building --------------------------------------------------------------------------------------------------
    @classmethod
    def from_cli(cls, argv=None, prog=None):
        """Defaults, then preset, then $ELECTRA_ARGS, then `argv` (default: sys.argv[1:], or none inside Jupyter).
        In a script (not in Jupyter), from here on a `UserError` prints one line instead of a traceback."""
        if not _in_notebook(): install_excepthook()
        if argv is None: argv = [] if _in_notebook() else sys.argv[1:]
        argv = shlex.split(os.environ.get('ELECTRA_ARGS', '')) + [a for a in argv if a != '--debug']
        if '-h' in argv or '--help' in argv:
            print(cls.help_text(prog)); sys.exit(0)
        overrides = cls.parse_args(argv)
        cfg = cls.build(**overrides)
        cfg.given = overrides          # what the user set explicitly (used when resuming a run)
        return cfg

    @classmethod
    def from_saved(cls, saved, overrides=None):
        """The config of a saved run (a dict), with `overrides` on top; fields unknown to this version are dropped."""
        values = {k: v for k, v in saved.items() if k in cls.field_names()}
        values.update(overrides or {})
        cfg = cls(**values)
        cfg.validate()
        cfg.given = dict(overrides or {})
        return cfg

    @classmethod
    def build(cls, **overrides):
        """Class defaults < preset (`overrides['preset']` or the default one) < the other overrides."""
        unknown = [k for k in overrides if k not in cls.field_names()]
        if unknown: raise UserError(_unknown_field_message(cls, unknown[0]))
        preset = overrides.get('preset', getattr(cls, 'preset', None))
        values = {}
        if preset is not None:
            if preset not in cls.PRESETS:
                raise UserError(f"unknown preset '{preset}'{_did_you_mean(preset, cls.PRESETS)}; "
                                f"presets: {', '.join(cls.PRESETS)}")
            values.update(cls.PRESETS[preset])
        values.update(overrides)
        cfg = cls(**values)
        cfg.validate()
        return cfg

    @classmethod
    def parse_args(cls, argv):
        """`--field value`, `--field=value` and bare `--flag` (booleans) -> {field: typed value}."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        out, i = {}, 0
        while i < len(argv):
            arg = argv[i]
            if not arg.startswith('--'):
                raise UserError(f"unexpected argument '{arg}'; fields are given as --name value "
                                f"(see --help)")
            name, eq, value = arg[2:].partition('=')
            name = name.replace('-', '_')
            if name not in fields: raise UserError(_unknown_field_message(cls, name))
            typ = _field_type(cls, name)
            if not eq:
                if typ is bool and (i + 1 >= len(argv) or argv[i + 1].startswith('--')): value = 'true'
                elif i + 1 >= len(argv): raise UserError(f'--{name} needs a value (see --help)')
                else: i += 1; value = argv[i]
            out[name] = _convert(name, value, typ)
            i += 1
        return out

    # -- checking --------------------------------------------------------------------------------------------------
    def validate(self):
        """Check each field's choices and rule (`option`); subclasses add checks across fields (call
        super().validate())."""
        for f in dataclasses.fields(self):
            choices, valid = f.metadata.get('choices'), f.metadata.get('valid')
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise UserError(f"--{f.name} '{value}' is not one of {', '.join(map(str, choices))}"
                                f"{_did_you_mean(str(value), choices)}")
            if valid and value is not None and not valid[1](value):
                raise UserError(f'--{f.name} {valid[0]}, got {value}')

    def check(self, ok, message):
        if not ok: raise UserError(message)

    @classmethod
    def help_text(cls, prog=None):
        prog = prog or os.path.basename(sys.argv[0] or 'script.py')
        lines = [f'usage: python {prog} [--field value ...]', '',
                 (cls.__doc__ or '').strip(), '', 'fields (default, then meaning):']
        for f in dataclasses.fields(cls):
            typ = _field_type(cls, f.name)
            tname = getattr(typ, '__name__', str(typ)).replace('typing.', '')
            choices = f.metadata.get('choices')
            extra = f"  [{' | '.join(map(str, choices))}]" if choices else ''
            lines.append(f'  --{f.name} {tname.upper()}'.ljust(30) + f' default {f.default!r}{extra}')
            lines.append(' ' * 32 + f.metadata.get('help', ''))
        if cls.PRESETS:
            lines += ['', 'presets (--preset NAME sets these fields; fields given on the command line win):']
            for name, values in cls.PRESETS.items():
                lines.append(f'  {name:<14} ' + ', '.join(f'{k}={v}' for k, v in values.items() if k != 'preset'))
        lines += ['', 'Also: --debug shows full tracebacks; ELECTRA_ARGS="--field value ..." is read before the '
                      'command line.']
        return '\n'.join(lines)


def _in_notebook():
    return 'ipykernel' in sys.modules or os.path.basename(sys.argv[0] or '').startswith('ipykernel')


def _field_type(cls, name):
    hints = typing.get_type_hints(cls)
    typ = hints[name]
    args = [a for a in typing.get_args(typ) if a is not type(None)]
    return args[0] if typing.get_origin(typ) in (typing.Union, getattr(__import__('types'), 'UnionType', None)) and args else typ


def _convert(name, value, typ):
    if isinstance(value, str) and value.lower() in ('none', 'null') and typ is not str: return None
    try:
        if typ is bool:
            v = value.lower()
            if v in ('1', 'true', 'yes', 'on'): return True
            if v in ('0', 'false', 'no', 'off'): return False
            raise ValueError
        if typ is int:
            number = float(value)                   # accepts 1e6 and 1_000_000
            if not number.is_integer(): raise ValueError
            return int(number)
        if typ is float: return float(value)
        return typ(value)
    except (ValueError, TypeError):
        tname = getattr(typ, '__name__', str(typ))
        raise UserError(f"--{name} expects {'an' if tname[0] in 'aeiou' else 'a'} {tname}, got '{value}'") from None


def _did_you_mean(word, options):
    close = did_you_mean(word, options)
    return f" (did you mean '{close}'?)" if close else ''


def _unknown_field_message(cls, name):
    close = did_you_mean(name, cls.field_names())
    hint = f"; did you mean --{close}?" if close else ''
    return f"unknown field --{name}{hint} (python {os.path.basename(sys.argv[0] or 'script.py')} --help lists all fields)"
