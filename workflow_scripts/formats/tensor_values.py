"""Checks on the values a converter writes, made per tensor (or per chunk) while it streams: no second pass.

A value beyond the output dtype's range would silently become Inf (70000 in float16), so it is refused, or with
`--allow-overflow` clamped to the dtype's largest finite value; NaN or Inf in an output fail the conversion.
"""

from __future__ import annotations

import math

import torch

from ..errors import DistilleryError


def cast_checked(tensor: torch.Tensor, dtype: torch.dtype, name: str, allow_overflow: bool = False) -> torch.Tensor:
    """`tensor` as `dtype`; values beyond the dtype's range refused, or clamped with allow_overflow."""
    if tensor.dtype == dtype or not (tensor.is_floating_point() and dtype.is_floating_point) or not tensor.numel():
        return tensor.to(dtype)
    limit = torch.finfo(dtype).max
    if torch.finfo(tensor.dtype).max > limit:
        largest = _largest_finite_magnitude(tensor)
        if largest > limit:
            if not allow_overflow:
                raise DistilleryError(
                    f"tensor {name!r} holds values up to {largest:g}, beyond the range of {str(dtype)[6:]} "
                    f"(±{limit:g}): they would become Inf",
                    hint="choose a wider --dtype (bfloat16 or float32), or pass --allow-overflow to clamp them",
                )
            tensor = tensor.clamp(-limit, limit)
    return tensor.to(dtype)


# Dtypes whose min and max reductions propagate NaN (and give ±Inf when a value is infinite) on every device.
_REDUCIBLE = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _extremes_if_finite(tensor: torch.Tensor) -> tuple[float, float] | None:
    """(min, max) of a tensor whose values are all finite, else None.

    One reduction, with no mask the size of the tensor: `isfinite(t).all()` costs about 20x as much on bfloat16,
    which made it a quarter of a MaxText conversion's time.
    """
    if tensor.dtype not in _REDUCIBLE:
        tensor = tensor.float()  # float8 and the like: exact in float32, NaN and Inf included
    low, high = (value.item() for value in torch.aminmax(tensor))
    return (low, high) if math.isfinite(low) and math.isfinite(high) else None


def _largest_finite_magnitude(tensor: torch.Tensor) -> float:
    """The largest |value| that is finite (NaN and Inf are refused apart, by `refuse_non_finite`)."""
    extremes = _extremes_if_finite(tensor)
    if extremes is not None:
        return max(-extremes[0], extremes[1])
    return tensor.abs().nan_to_num(nan=0.0, posinf=0.0).max().item()


def refuse_non_finite(tensor: torch.Tensor, name: str) -> None:
    """Fail the conversion on NaN or Inf in what is about to be written."""
    if tensor.is_floating_point() and tensor.numel() and _extremes_if_finite(tensor) is None:
        raise DistilleryError(
            f"tensor {name!r} would be written with NaN or Inf values",
            hint="nothing was written; run `distillery verify` on the input to see which tensors hold them",
        )
