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
    )
}
