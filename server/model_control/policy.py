"""Which versions of a model serve: Triton's version policy.

`latest` serves the newest N complete versions (1 by default), `specific` the versions listed, `all` every
complete version. Versions that were rejected (damaged) are left out before the policy picks, so with
`latest: 1` a damaged newest version leaves the one before it serving.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class VersionPolicy(BaseModel):
    """`version_policy` of a model's config.yaml, in Triton's form or the short one.

    `{latest: {num_versions: 2}}` or `{latest: 2}`; `{specific: {versions: [1, 3]}}` or `{specific: [1, 3]}`;
    `{all: {}}`.
    """

    model_config = ConfigDict(extra="forbid")

    latest: int | None = Field(None, ge=1, description="Serve the newest N complete versions.")
    specific: list[int] | None = Field(None, min_length=1, description="Serve these versions only.")
    all: bool = Field(False, description="Serve every complete version.")

    @model_validator(mode="before")
    @classmethod
    def _triton_form(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        values = dict(values)
        if isinstance(values.get("latest"), dict):
            values["latest"] = values["latest"].get("num_versions", 1)
        if isinstance(values.get("specific"), dict):
            values["specific"] = values["specific"].get("versions")
        if isinstance(values.get("all"), dict):
            values["all"] = True
        return values

    @model_validator(mode="after")
    def _one_kind(self) -> VersionPolicy:
        kinds = [self.latest is not None, self.specific is not None, self.all]
        if sum(kinds) > 1:
            raise ValueError("version_policy takes one of latest, specific or all")
        return self

    def select(self, available: list[str]) -> list[str]:
        """The versions to serve among `available` (complete, not rejected), lowest first."""
        ordered = sorted(available, key=int)
        if self.all:
            return ordered
        if self.specific is not None:
            wanted = {str(version) for version in self.specific}
            return [version for version in ordered if version in wanted]
        return ordered[-(self.latest or 1) :]

    def describe(self) -> str:
        """The policy in config.yaml's short form, for logs and RepositoryIndex reasons."""
        if self.all:
            return "all"
        if self.specific is not None:
            return f"specific: {self.specific}"
        return f"latest: {self.latest or 1}"

    def pinned(self, version: str) -> VersionPolicy:
        """The policy `--model-version` makes: that version alone."""
        return VersionPolicy(specific=[int(version)])
