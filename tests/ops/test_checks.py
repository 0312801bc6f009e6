import pytest
import torch

from zoo.ops._checks import checked_output


def test_checked_output_passes_finite_outputs_whose_sum_overflows():
    out = torch.full((4,), 3e38)  # finite, but the sum screen overflows to inf
    assert checked_output("op", out, q=torch.ones(2)) is out
    half = torch.full((1000,), 60000.0, dtype=torch.float16)  # an fp16 sum would overflow; fp32 does not
    assert checked_output("op", half, q=torch.ones(2)) is half


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_checked_output_names_the_non_finite_input(bad):
    q = torch.ones(3, 4)
    q[1, 2] = bad
    out = torch.ones(3, 4)
    out[0, 0] = bad
    with pytest.raises(ValueError, match="'q'"):
        checked_output("op", out, k=torch.ones(2), q=q)


def test_checked_output_does_not_blame_finite_inputs():
    out = torch.tensor([1.0, float("nan")])  # e.g. a fully masked row: the op's own doing
    assert checked_output("op", out, q=torch.ones(2)) is out
