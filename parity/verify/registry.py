"""The one list of modules that the tests, the parity report and the benchmark iterate over.

Each :class:`Spec` names a module registered in both ``attn_torch.MODULES`` and
``attn_flax.MODULES``, its default hyper-parameters and the input shapes it is
checked on (NCHW; the Flax side gets the same data transposed to NHWC). The
first case is the example input; the others are off-default shapes: odd,
non-square maps and batch 1 (checked in eval mode only, since training-mode
batch statistics of a single sample are degenerate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping


@dataclass(frozen=True)
class Case:
    shape: tuple[int, int, int, int]  # NCHW
    modes: tuple[str, ...] = ("eval", "train")
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # overrides of Spec.kwargs

    @property
    def label(self) -> str:
        n, c, h, w = self.shape
        extra = "".join(f",{k}={v}" for k, v in self.kwargs.items())
        return f"{n}x{c}x{h}x{w}{extra}"


@dataclass(frozen=True)
class Spec:
    name: str
    kwargs: Mapping[str, Any]
    cases: tuple[Case, ...]
    channels_arg: str | None = "channels"  # the argument that sets C; None: not benchmarked at other C
    model: str | None = None  # a timm architecture (``name`` is then that name): built by create_model
    network: bool = False  # a whole network, not one layer: the report starts these first

    def torch_module(self, case: Case) -> Any:
        """The torch module of ``case``: the registered class, or ``attn_torch.create_model``."""
        import attn_torch

        if self.model is not None:
            return attn_torch.create_model(self.model, **self.kwargs_for(case))
        return attn_torch.MODULES[self.name](**self.kwargs_for(case))

    def kwargs_at(self, channels: int) -> dict[str, Any]:
        """The default kwargs with the channel count set to ``channels`` (for the benchmark)."""
        kwargs = dict(self.kwargs)
        if self.channels_arg in kwargs:
            kwargs[self.channels_arg] = channels
        return kwargs

    @property
    def example_shape(self) -> tuple[int, int, int, int]:
        return self.cases[0].shape

    def kwargs_for(self, case: Case) -> dict[str, Any]:
        return {**self.kwargs, **case.kwargs}


def _standard_cases(channels: int, **kwargs: Any) -> tuple[Case, ...]:
    """Default example, an odd non-square map, and batch 1 in eval."""
    return (
        Case((2, channels, 8, 8), kwargs=kwargs),
        Case((3, channels, 7, 9), kwargs=kwargs),
        Case((1, channels, 5, 11), modes=("eval",), kwargs=kwargs),
    )


def _blockwise_cases() -> tuple[Case, ...]:
    """DANet's memory-efficient path, forced at sizes where the automatic choice is exact."""
    return (
        Case((2, 16, 8, 8), kwargs={"memory_efficient": True}),
        Case((1, 24, 3, 10), modes=("eval",), kwargs={"channels": 24, "memory_efficient": True}),
    )


SPECS: dict[str, Spec] = {
    spec.name: spec
    for spec in (
        Spec("SE", {"channels": 32, "reduction": 4}, _standard_cases(32)),
        Spec(
            "ECA",
            {"kernel_size": 3},
            _standard_cases(32) + (Case((2, 64, 6, 5), kwargs={"kernel_size": None, "channels": 64}),),
        ),
        Spec(
            "CBAM",
            {"channels": 32, "reduction": 4, "kernel_size": 7},
            _standard_cases(32) + (Case((2, 32, 6, 5), kwargs={"kernel_size": 3, "residual": False}),),
        ),
        Spec("CoordAttention", {"channels": 32, "reduction": 8}, _standard_cases(32)),
        Spec(
            "PositionAttention",
            {"channels": 16},
            _standard_cases(16) + (Case((2, 24, 3, 10), kwargs={"channels": 24}),) + _blockwise_cases(),
        ),
        Spec(
            "ChannelAttention",
            {"channels": 16},
            _standard_cases(16) + (Case((2, 24, 3, 10), kwargs={"channels": 24}),),
        ),
        Spec(
            "DualAttention",
            {"channels": 16},
            _standard_cases(16) + (Case((2, 24, 3, 10), kwargs={"channels": 24}),) + _blockwise_cases(),
        ),
        Spec(
            "CrissCrossAttention",
            {"channels": 16, "recurrence": 1},
            _standard_cases(16)
            + (
                Case((2, 32, 9, 11), kwargs={"channels": 32, "recurrence": 2}),
                Case((2, 16, 1, 7)),  # one row: every column energy is masked
            ),
        ),
        Spec(
            "BAM",
            {"channels": 32, "reduction": 4, "dilation": 2},
            # Batches of 3+ in training: over 2 samples the channel branch's BatchNorm1d
            # outputs +-scale whatever the input, so every gradient above it is round-off.
            (
                Case((4, 32, 8, 8)),
                Case((3, 32, 7, 9)),
                Case((1, 32, 5, 11), modes=("eval",)),
                Case((4, 32, 6, 5), kwargs={"reduction": 8, "dilation": 3}),
            ),
        ),
        Spec(
            "GAM",
            {"channels": 32, "rate": 4},
            _standard_cases(32) + (Case((2, 16, 6, 5), kwargs={"channels": 16, "rate": 2}),),
        ),
        Spec(
            "ShuffleAttention",
            {"channels": 32, "groups": 4},
            _standard_cases(32)
            + (
                Case((2, 48, 6, 5), kwargs={"channels": 48, "groups": 3}),  # odd G: group order matters
                Case((2, 32, 5, 6), kwargs={"groups": 16}),  # one channel per half-group
            ),
        ),
        Spec(
            "SGE",
            {"groups": 4, "channels": 32},
            _standard_cases(32)
            + (
                Case((2, 48, 6, 5), kwargs={"groups": 6, "channels": None}),
                Case((2, 32, 1, 2)),  # the smallest map with an unbiased std
            ),
        ),
        Spec(
            "ParallelPolarizedSelfAttention",
            {"channels": 32},
            _standard_cases(32) + (Case((2, 17, 6, 5), kwargs={"channels": 17}),),  # odd C
        ),
        Spec(
            "SequentialPolarizedSelfAttention",
            {"channels": 32},
            _standard_cases(32) + (Case((2, 17, 6, 5), kwargs={"channels": 17}),),  # odd C
        ),
        Spec(
            # The backbone: widths are torchvision's, so only the input stays small. Training
            # mode needs enough values per channel in layer4's BatchNorms (2x3x32x32 leaves 2:
            # torch's own float32 gradients then differ from float64 by 4e-2), and a
            # float32 forward difference of ~1e-5 flips the gradient of any ReLU input that
            # close to 0 (4x3x48x48 has one: grad diff 0.18). At 4x3x64x64 the worst
            # element uses 0.39 of the tolerance.
            "ResNet",
            {"depth": 18, "attention": "CBAM", "num_classes": 10},
            (
                Case((4, 3, 64, 64)),
                Case((1, 3, 27, 35), modes=("eval",), kwargs={"attention": "se"}),  # odd map, lowercase name
            ),
            channels_arg=None,
            network=True,
        ),
    )
}


# timm architectures with rows of their own in the parity report: eval mode, one small input,
# ten classes (train mode of all 89 architectures is checked against timm's own outputs in
# tests/test_timm_models.py).
MODEL_SPECS: dict[str, Spec] = {
    model: Spec(model, {"num_classes": 10}, (Case((2, 3, 32, 32), modes=("eval",)),), channels_arg=None, model=model,
                network=True)
    for model in ("seresnet50", "ecaresnet50d", "seresnext26d_32x4d", "resnet50_gn", "legacy_seresnet18")
}
