"""Reference feature statistics for drift detection.

A model package ships, per input feature, the bin edges of its training data and
the proportion of training samples in each bin.  The agent bins live inputs the
same way and compares with the Population Stability Index, which needs no raw
data on the device and costs one ``searchsorted`` per feature.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator


class FeatureReference(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    edges: Annotated[list[float], Field(max_length=255)]
    """Interior bin edges, ascending: ``k - 1`` edges make ``k`` bins."""
    expected: Annotated[list[float], Field(min_length=1, max_length=256)]
    """Share of the reference samples in each bin; sums to 1."""

    @model_validator(mode="after")
    def _consistent(self) -> FeatureReference:
        if len(self.expected) != len(self.edges) + 1:
            raise ValueError("expected needs exactly one entry more than edges")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("edges must be strictly ascending")
        if any(p < 0 for p in self.expected) or abs(sum(self.expected) - 1.0) > 1e-3:
            raise ValueError("expected must be non-negative proportions summing to 1")
        return self


class DriftReference(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    samples: Annotated[int, Field(ge=1)]
    """How many reference samples the proportions come from."""
    features: Annotated[list[FeatureReference], Field(min_length=1, max_length=65536)]
