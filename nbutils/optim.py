"""Discriminative learning rates (ULMFiT): one optimizer parameter group per layer group, each
lower group learning more slowly than the one above it.

ULMFiT divides the rate by 2.6 per group going down (`factor`); "layer-wise learning-rate decay"
(ELECTRA, DeBERTa-v3 fine-tuning recipes) multiplies it by a `decay` such as 0.8-0.95, which
is the same rule with factor = 1 / decay.

`LayerGroupTrainer` is a `Trainer` whose optimizer is built from these groups. It also holds
*every* tunable parameter from the start, frozen or not: the stock Trainer builds its optimizer
only over parameters that require grad at that moment, so a layer unfrozen later by
`nbutils.unfreezing.GradualUnfreezing` would silently never be updated. Frozen parameters get no
gradient (`.grad` stays None), and torch's AdamW skips such parameters entirely, weight decay
included, so holding them costs nothing and changes nothing until they are unfrozen.
It overrides `create_optimizer` (the documented extension point) rather than passing
`optimizers=`, so it also works with `model_init` and `Trainer.hyperparameter_search`.
"""

from __future__ import annotations

from transformers import Trainer

from nbutils.layers import layer_groups, tunable_parameters

ULMFIT_FACTOR = 2.6


def discriminative_learning_rates(n_groups: int, learning_rate: float, factor: float = ULMFIT_FACTOR,
                                  decay: float | None = None) -> list[float]:
    """Rates for `n_groups` groups, bottom to top: the top group gets `learning_rate`, each group
    below gets the rate above divided by `factor` (or multiplied by `decay` when given)."""
    if decay is not None:
        if not 0 < decay <= 1:
            raise ValueError(f"lr_decay must lie in (0, 1], got {decay!r}")
        factor = 1 / decay
    if factor < 1:
        raise ValueError(f"lr_factor must be >= 1 (lower groups learn more slowly), got {factor!r}")
    return [learning_rate / factor ** (n_groups - 1 - i) for i in range(n_groups)]


def parameter_groups(model, learning_rate: float, weight_decay: float, factor: float = 1.0,
                     decay: float | None = None, blocks_per_group: int = 1,
                     decay_parameters: set | None = None) -> list[dict]:
    """Optimizer parameter groups: per layer group, one with weight decay and one without.

    `decay_parameters` are the ids of the parameters weight decay applies to (the Trainer's rule:
    not biases, not norms); by default every parameter with more than one dimension.
    Every tunable parameter is included, whether or not it requires grad right now.
    """
    groups = layer_groups(model, blocks_per_group)
    rates = discriminative_learning_rates(len(groups), learning_rate, factor, decay)
    tunable = {id(p) for p in tunable_parameters(model)}
    result = []
    for group, rate in zip(groups, rates):
        params = [p for _, p in group.parameters if id(p) in tunable]
        with_decay = [p for p in params if (id(p) in decay_parameters if decay_parameters is not None
                                            else p.ndim > 1)]
        chosen = {id(p) for p in with_decay}
        without_decay = [p for p in params if id(p) not in chosen]
        for params_, wd, suffix in ((with_decay, weight_decay, ""), (without_decay, 0.0, " (no decay)")):
            if params_:
                result.append({"params": params_, "lr": rate, "weight_decay": wd,
                               "name": group.name + suffix})
    return result


class LayerGroupTrainer(Trainer):
    """A Trainer with discriminative learning rates over layer groups, whose optimizer holds
    every tunable parameter (so gradual unfreezing works).

    `lr_factor=1` gives every group the same rate: the stock optimizer, plus the frozen weights.
    """

    def __init__(self, *args, lr_factor: float = 1.0, lr_decay: float | None = None,
                 blocks_per_group: int = 1, **kwargs):
        self.lr_factor, self.lr_decay, self.blocks_per_group = lr_factor, lr_decay, blocks_per_group
        # Check the settings now, not at the first training step.
        discriminative_learning_rates(2, 1.0, lr_factor, lr_decay)
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None):
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            named = dict(opt_model.named_parameters())
            decay_ids = {id(named[n]) for n in self.get_decay_parameter_names(opt_model) if n in named}
            groups = parameter_groups(opt_model, self.args.learning_rate, self.args.weight_decay,
                                      self.lr_factor, self.lr_decay, self.blocks_per_group, decay_ids)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)  # each group's lr wins
        return self.optimizer


def learning_rates_by_group(optimizer) -> dict[str, float]:
    """The initial rate of each named parameter group (for the run record and the tests)."""
    return {group.get("name", str(i)): group.get("initial_lr", group["lr"])
            for i, group in enumerate(optimizer.param_groups)}
