"""Where a file's preset comes from (SPEC §3), as typed values that travel from the
watcher through the claim to the job description. Torch-free.

The first that exists wins: the sidecar ``NAME.json`` (``SidecarPreset``), the
folder's ``preset.json`` (``FolderPreset``), the preset named after the subfolder
(``NamedPreset``), the config's ``default_preset`` (``DefaultPreset``). A file that
cannot become a job is ``Rejected`` with its failure kind: not an image
(``unsupported_file``), a sidecar whose image never came (``no_image``), an image with
no preset after ``pair_timeout_s`` (``no_preset``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..failures import FailureKind

__all__ = ["DefaultPreset", "FolderPreset", "NamedPreset", "Origin", "Rejected", "SidecarPreset", "default_origin",
           "describe_origin", "folder_origin", "named_origin", "rejected", "sidecar_origin"]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SidecarPreset(_Frozen):
    kind: Literal["sidecar"] = "sidecar"
    file: str  # the sidecar's name, in the image's folder
    # a.jpg and a.png share a.json: the sidecar stays in the inbox for the other one,
    # and this job reads it from there at claim time.
    shared: bool = False


class FolderPreset(_Frozen):
    kind: Literal["folder"] = "folder"
    file: str  # path of the folder's preset.json, relative to the inbox


class NamedPreset(_Frozen):
    kind: Literal["named"] = "named"
    name: str


class DefaultPreset(_Frozen):
    kind: Literal["default"] = "default"
    name: str


class Rejected(_Frozen):
    kind: Literal["rejected"] = "rejected"
    failure: FailureKind


Origin = Annotated[SidecarPreset | FolderPreset | NamedPreset | DefaultPreset | Rejected,
                   Field(discriminator="kind")]


def describe_origin(origin: Origin) -> str:
    """The origin in words, for reports and error files."""
    if isinstance(origin, SidecarPreset):
        return f"sidecar {origin.file}"
    if isinstance(origin, FolderPreset):
        return f"folder preset inbox/{origin.file}"
    if isinstance(origin, NamedPreset):
        return f"named preset {origin.name}"
    if isinstance(origin, DefaultPreset):
        return f"default preset {origin.name}"
    return f"none ({origin.failure.value})"


# The watcher pairs every waiting file at each look: origins are frozen values, so one
# object per distinct value is shared rather than one pydantic model per file per call.
@lru_cache(maxsize=1024)
def rejected(failure: FailureKind) -> Rejected:
    return Rejected(failure=failure)


@lru_cache(maxsize=1024)
def sidecar_origin(file: str, shared: bool) -> SidecarPreset:
    return SidecarPreset(file=file, shared=shared)


@lru_cache(maxsize=1024)
def folder_origin(file: str) -> FolderPreset:
    return FolderPreset(file=file)


@lru_cache(maxsize=256)
def named_origin(name: str) -> NamedPreset:
    return NamedPreset(name=name)


@lru_cache(maxsize=16)
def default_origin(name: str) -> DefaultPreset:
    return DefaultPreset(name=name)
