"""The pretraining objectives (`--objective`): the paper's ELECTRA and the comparisons of its Table 5 (section 3.2;
the official code's `electra_objective`), one entry each.

An entry says everything the code needs about its objective: whether a generator is trained, which head the second
model has (and so which folder the export writes), what text that model reads and where its loss counts. The step
(`electra.ELECTRA`), the models (`electra.models_for`), the export and detection read the entry, never the name: an
objective is added by adding its entry.
"""
from dataclasses import dataclass

from .errors import UserError

# The second model's head: 'discriminator' is an ElectraForPreTraining (one logit per token: replaced or not),
# 'mlm' an ElectraForMaskedLM of the discriminator's size. The name is also the export's folder.
HEADS = ('discriminator', 'mlm')


@dataclass(frozen=True)
class Objective:
    """One pretraining objective. `reads`: 'samples' (the text with the generator's samples put in) or 'masked' (the
    masked text); `scored`: where the second model's loss counts, on 'all' real tokens or the 'masked' positions."""
    name: str
    summary: str     # one line, for --help and the printed model description
    generator: bool  # a generator is trained (its MLM loss is part of the total) and its samples are drawn
    head: str        # HEADS
    reads: str       # 'samples' or 'masked'
    scored: str      # 'all' or 'masked'
    copy: bool = False  # an MLM head scored on every token (All-Tokens MLM): its output puts a learned probability D
                        # on the token it reads and 1 - D on the MLM softmax (the paper's copy mechanism)

    def __post_init__(self):
        # The combinations the step computes: samples need a generator; a detector reads samples (it labels what
        # they replaced); an MLM head predicts at the masked positions, or at every token with the copy mechanism
        ok = (self.head in HEADS and self.reads in ('samples', 'masked') and self.scored in ('all', 'masked')
              and (self.generator or self.reads == 'masked') and (not self.detects or self.reads == 'samples')
              and (self.detects or (self.scored == 'all') == self.copy) and not (self.detects and self.copy))
        if not ok: raise ValueError(f'objective {self.name!r}: the step cannot compute {self}')

    @property
    def detects(self):
        """The second model detects replaced tokens (a discriminator head), so it can be used for detection."""
        return self.head == 'discriminator'


OBJECTIVES = {o.name: o for o in (
    Objective('electra', "the paper's: the discriminator tells replaced from original on every token, next to the "
              "generator's MLM", generator=True, head='discriminator', reads='samples', scored='all'),
    Objective('electra-15', "ELECTRA 15%: the discriminator's loss on the masked positions only",
              generator=True, head='discriminator', reads='samples', scored='masked'),
    Objective('replace-mlm', "Replace MLM: masked positions get the generator's samples instead of [MASK]; the model "
              'predicts the originals there', generator=True, head='mlm', reads='samples', scored='masked'),
    Objective('mlm', 'BERT: the discriminator-sized model trained as a masked language model alone, no generator',
              generator=False, head='mlm', reads='masked', scored='masked'),
    Objective('all-tokens-mlm', 'All-Tokens MLM: as Replace MLM, but the model predicts every token, its input token '
              'with a learned copy probability D, the rest with 1 - D times its MLM softmax', generator=True,
              head='mlm', reads='samples', scored='all', copy=True),
)}
DEFAULT_OBJECTIVE = 'electra'  # the paper's; also what checkpoints from before the option were trained with


def check_objective(objective):
    """`objective` if it names an entry, else one clear line listing them."""
    if objective not in OBJECTIVES:
        raise UserError(f"unknown objective '{objective}'; objectives: {', '.join(OBJECTIVES)}")
    return objective


def objective_named(objective):
    """The entry of `objective` (checked: `check_objective`)."""
    return OBJECTIVES[check_objective(objective)]


def objectives_help():
    """Every objective with its summary, for the --objective option's help."""
    return '; '.join(f"'{o.name}' ({o.summary})" for o in OBJECTIVES.values())
