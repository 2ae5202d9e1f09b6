"""The finetuning model: the pretrained discriminator body with the paper's head, and its losses."""
import functools

from torch import nn
from torch.nn import functional as F

from .errors import UserError
from .glue import task_by_name
from .speedups import use_fast_dropout


class ElectraClassifier(nn.Module):
    """The discriminator body, then dropout on the [CLS] vector and one linear layer (RECIPE.md).

    No pooler and no extra dense+GELU layer (Hugging Face's ElectraClassificationHead has one; the paper has not).
    Submodules are named like Hugging Face's ElectraForSequenceClassification (`electra.*`, `classifier.*`).
    """

    def __init__(self, electra, n_outputs, dropout=0.1):
        super().__init__()
        self.electra = electra  # a transformers.ElectraModel: the pretrained discriminator without its head
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(electra.config.hidden_size, n_outputs)
        nn.init.xavier_uniform_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)
        use_fast_dropout(self)  # the same dropout, faster in CPU training (speedups.py)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        hidden = self.electra(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state  # (B, L, H)
        return self.classifier(self.dropout(hidden[:, 0]))  # (B, n_outputs)


def classification_loss(logits, labels, reduction='mean'):
    return F.cross_entropy(logits, labels, reduction=reduction)


def regression_loss(logits, labels, reduction='mean'):
    # STS-B: the model predicts score/5, so targets in [0, 5] become [0, 1]
    return F.mse_loss(logits.squeeze(-1).float(), labels.float() / 5, reduction=reduction)


LOSS_REDUCTIONS = ('sum', 'mean')


def loss_for(task, reduction):
    """Cross-entropy for classification; MSE on target/5 for STS-B; over a batch, the per-example losses' 'sum'
    (the official code's, whose gradient clipping at 1.0 then acts on a 32x larger norm) or 'mean'.
    A partial of a module-level function (picklable)."""
    if reduction not in LOSS_REDUCTIONS:
        raise UserError(f"unknown loss reduction '{reduction}'; use one of {', '.join(LOSS_REDUCTIONS)}")
    loss = regression_loss if task_by_name(task).is_regression else classification_loss
    return functools.partial(loss, reduction=reduction)
