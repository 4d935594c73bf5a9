"""Where a text data set comes from: a local file or a hub data set.

Shared by calibration, perplexity and QAT training data.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: a Hub data set id, ``name`` or ``org/name``: never a path (``datasets`` would load a local folder)
HUB_DATASET_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$"


class DatasetRef(BaseModel):
    """A text data set: ``path`` (local .txt / .jsonl) or ``hub`` (data set id).

    Relative paths are resolved against the recipe's folder.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str | None = Field(None, description="local .txt (one sample per line) or .jsonl file")
    hub: str | None = Field(
        None,
        description="Hugging Face data set id, e.g. 'wikitext' or 'org/name' (a local file goes in 'path')",
        json_schema_extra={"pattern": HUB_DATASET_ID, "maxLength": 193},
    )
    subset: str | None = Field(None, description="hub data set configuration, e.g. 'wikitext-2-raw-v1'")
    split: str = "train"
    column: str = Field("text", description="the text column (jsonl key or data set column)")
    revision: str | None = None

    @field_validator("hub")
    @classmethod
    def _a_hub_id(cls, hub: str | None) -> str | None:
        if hub is not None and not re.fullmatch(HUB_DATASET_ID, hub):
            raise ValueError(
                f"'{hub[:100]}' is not a Hub data set id: give 'name' or 'org/name' (letters, digits, '.', '_', '-'); "
                "a local file goes in 'path'"
            )
        return hub

    @model_validator(mode="after")
    def _exactly_one_source(self) -> DatasetRef:
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of 'path' (a local file) or 'hub' (a data set id)")
        return self

    @property
    def kind(self) -> Literal["path", "hub"]:
        return "path" if self.path is not None else "hub"
