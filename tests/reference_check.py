"""The check shared by the reference tests: a reference module's state dict loads strictly
into ours and both compute the same output and BatchNorm statistics."""

import torch

from parity.verify.harness import randomize_


def assert_agrees_with_reference(reference: torch.nn.Module, ours: torch.nn.Module, shape, training: bool) -> None:
    torch.manual_seed(0)
    reference = randomize_(reference, seed=1)
    ours.load_state_dict(reference.state_dict(), strict=True)
    reference.train(training)
    ours.train(training)
    x = torch.randn(shape)
    with torch.no_grad():
        expected = reference(x.clone())
        got = ours(x.clone())
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for key, value in reference.state_dict().items():  # BatchNorm statistics after the step
        torch.testing.assert_close(ours.state_dict()[key], value, rtol=1e-6, atol=1e-6)
