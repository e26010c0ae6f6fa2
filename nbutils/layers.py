"""Layer groups and freezing, with fastai's names: `layer_groups`, `freeze`, `freeze_to`,
`unfreeze`, `trainable_summary`.

A model is split into ordered groups, bottom to top: the embeddings, the transformer blocks
(one group per block, or `blocks_per_group` consecutive blocks), the head. `freeze_to(model, n)`
freezes the first `n` groups and trains the rest; a negative `n` counts from the top, so
`freeze_to(model, -1)` (= `freeze(model)`) trains only the head and `freeze_to(model, 0)`
(= `unfreeze(model)`) trains everything. Gradual unfreezing (`nbutils.unfreezing`) and
discriminative learning rates (`nbutils.optim`) use the same groups.

Where the blocks live differs per architecture, so each known `config.model_type` has a layout
below; an unknown one is an error naming the known ones, never a silent guess. Every parameter
belongs to exactly one group; a weight tied to the input embeddings (T5's and BERT's
output projections) belongs to the embeddings group.

PEFT: for a `PeftModel` the groups are those of the wrapped model, and freezing touches only the
adapter parameters (LoRA matrices, `modules_to_save` copies): the base weights PEFT froze stay
frozen, even after `unfreeze`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class LayoutError(ValueError):
    """The model's architecture or module layout is not one this module knows."""


@dataclass(frozen=True)
class Layout:
    # Block stacks bottom to top: (path of the ModuleList under the base model, the module that
    # closes the stack or None). A closing norm goes with the stack's last group, except for the
    # last stack, whose final norm feeds the head and goes with it.
    stacks: tuple[tuple[str, str | None], ...]
    # Modules of the base model that belong to the head (BERT's pooler, T5's lm_head when the
    # base model is the whole model). Everything else in the base model outside the stacks is
    # "embeddings"; everything outside the base model is "head".
    head: tuple[str, ...] = ()


LAYOUTS: dict[str, Layout] = {
    "bert": Layout(stacks=(("encoder.layer", None),), head=("pooler",)),
    "roberta": Layout(stacks=(("encoder.layer", None),), head=("pooler",)),
    "distilbert": Layout(stacks=(("transformer.layer", None),)),
    # DeBERTa's relative position embeddings (encoder.rel_embeddings, encoder.LayerNorm) feed
    # every block, so they fall into the embeddings group.
    "deberta-v2": Layout(stacks=(("encoder.layer", None),)),
    "t5": Layout(stacks=(("encoder.block", "encoder.final_layer_norm"),
                         ("decoder.block", "decoder.final_layer_norm")), head=("lm_head",)),
    "llama": Layout(stacks=(("layers", "norm"),)),
}


@dataclass
class LayerGroup:
    name: str
    parameters: list = field(default_factory=list)  # [(name, Parameter)], names as in the model

    def numel(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for _, p in self.parameters if p.requires_grad or not trainable_only)


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def unwrap(model):
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if is_peft_model(model) else model


def _adapter_parameter(name: str, adapters: set[str]) -> bool:
    # PEFT names adapter weights `...lora_A.<adapter>.weight` and `...modules_to_save.<adapter>...`;
    # the frozen original of a saved module is `...original_module...`.
    return bool(adapters & set(name.split(".")))


def tunable_parameters(model) -> list:
    """The parameters freezing may switch on: all of them, or a PEFT model's adapter weights."""
    inner = unwrap(model)
    if not is_peft_model(model):
        return list(inner.parameters())
    adapters = set(model.peft_config)
    return [p for name, p in inner.named_parameters() if _adapter_parameter(name, adapters)]


def _base(inner):
    prefix = getattr(inner, "base_model_prefix", "")
    if prefix and hasattr(inner, prefix):
        return prefix + ".", getattr(inner, prefix)
    return "", inner


def _get(module, path: str):
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def _chunks(n: int, size: int) -> list[range]:
    return [range(start, min(start + size, n)) for start in range(0, n, size)]


def layer_groups(model, blocks_per_group: int = 1) -> list[LayerGroup]:
    """The model's parameters in ordered groups: embeddings, blocks (bottom to top), head.

    For T5 the encoder's blocks come before the decoder's. Groups without parameters are left
    out. Raises LayoutError for an architecture without a known layout.
    """
    import torch.nn as nn

    if not isinstance(blocks_per_group, int) or blocks_per_group < 1:
        raise ValueError(f"blocks_per_group must be a whole number >= 1, got {blocks_per_group!r}")
    inner = unwrap(model)
    model_type = getattr(getattr(inner, "config", None), "model_type", None)
    if model_type not in LAYOUTS:
        raise LayoutError(f"layer groups: unknown architecture {model_type!r} "
                          f"({type(inner).__name__}); known: {', '.join(LAYOUTS)}. "
                          "Add its layout to nbutils.layers.LAYOUTS.")
    layout = LAYOUTS[model_type]
    prefix, base = _base(inner)

    # Name prefix -> group name, most specific first when matching.
    owners: list[tuple[str, str]] = []
    block_groups: list[str] = []
    stacks = [(path, closing, _get(base, path)) for path, closing in layout.stacks]
    stacks = [(path, closing, blocks) for path, closing, blocks in stacks if blocks is not None]
    if not stacks or not all(isinstance(blocks, nn.ModuleList) for _, _, blocks in stacks):
        expected = " or ".join(path for path, _ in layout.stacks)
        raise LayoutError(f"layer groups: unknown layer layout for {type(inner).__name__} "
                          f"(model_type {model_type!r}): expected the transformer blocks as a "
                          f"ModuleList at {prefix}{expected}")
    for i, (path, closing, blocks) in enumerate(stacks):
        last_stack = i == len(stacks) - 1
        for chunk in _chunks(len(blocks), blocks_per_group):
            name = f"{path}.{chunk[0]}" + (f"-{chunk[-1]}" if len(chunk) > 1 else "")
            block_groups.append(name)
            owners += [(f"{prefix}{path}.{b}.", name) for b in chunk]
        if closing and _get(base, closing) is not None:
            owners.append((f"{prefix}{closing}.", "head" if last_stack else block_groups[-1]))
    owners += [(f"{prefix}{module}.", "head") for module in layout.head]

    groups = {name: LayerGroup(name) for name in ["embeddings", *block_groups, "head"]}
    for name, param in inner.named_parameters():  # each shared (tied) weight once, first name
        owner = next((g for p, g in owners if name.startswith(p)), None)
        if owner is None:
            owner = "embeddings" if name.startswith(prefix) else "head"
        groups[owner].parameters.append((name, param))
    return [group for group in groups.values() if group.parameters]


def freeze_to(model, n: int, blocks_per_group: int = 1) -> list[LayerGroup]:
    """Freeze the first `n` layer groups and make the rest trainable (negative: from the top).

    `n` must lie in -groups..groups-1: freezing every group would leave nothing to train.
    """
    groups = layer_groups(model, blocks_per_group)
    count = len(groups)
    if not isinstance(n, int) or isinstance(n, bool) or not -count <= n < count:
        names = ", ".join(g.name for g in groups)
        raise ValueError(f"freeze_to={n!r} is out of range: {type(unwrap(model)).__name__} has "
                         f"{count} layer groups ({names}); use 0..{count - 1} (the number of groups "
                         f"to freeze from the bottom) or -{count}..-1 (-1 trains only the head)")
    cut = n if n >= 0 else count + n
    tunable = {id(p) for p in tunable_parameters(model)}
    for index, group in enumerate(groups):
        for _, param in group.parameters:
            if id(param) in tunable:
                param.requires_grad_(index >= cut)
    return groups


def freeze(model, blocks_per_group: int = 1) -> list[LayerGroup]:
    """Train only the head (the top layer group)."""
    return freeze_to(model, -1, blocks_per_group)


def unfreeze(model, blocks_per_group: int = 1) -> list[LayerGroup]:
    """Train every layer group (for a PEFT model: every adapter weight)."""
    return freeze_to(model, 0, blocks_per_group)


def trainable_summary(model, blocks_per_group: int = 1):
    """A table of trainable and total parameters per layer group, with a final "all" row."""
    import pandas as pd

    rows = [{"group": g.name, "trainable": g.numel(trainable_only=True), "total": g.numel()}
            for g in layer_groups(model, blocks_per_group)]
    rows.append({"group": "all", "trainable": sum(r["trainable"] for r in rows),
                 "total": sum(r["total"] for r in rows)})
    table = pd.DataFrame(rows).set_index("group")
    table["share trainable"] = (table["trainable"] / table["total"]).round(3)
    return table
