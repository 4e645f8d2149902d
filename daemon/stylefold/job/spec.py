"""The job as data: a frozen, JSON-serialisable description made when a job is claimed.

A ``JobSpec`` holds everything a render depends on — the input by content (sha256)
and where its bytes are, the effective preset (``extends`` applied, whatever its
origin: sidecar, folder ``preset.json``, folder name, default, ``stylefold run``), the
style images by content, and the caps in force — so a job resumed after a restart runs
under exactly the parameters it started with, and a worker on another machine needs
nothing else. It knows nothing of hot folders. Torch-free (pydantic only), so the hot
folder can make, store and check one without loading torch; a description read back
from a file or a message is validated like any hostile input.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from ..failures import FailureKind, JobFailure
from ..presets import Preset
from ..safeopen import sha256_regular

__all__ = ["Caps", "InputRef", "JobSpec", "StyleInput", "result_key"]

SPEC_VERSION = 1
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
# Plain str: a length constraint makes pydantic-core refuse Linux file names that are not
# UTF-8 (surrogate escapes), which the hot folder must process.
Name = str


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputRef(_Frozen):
    """The photo: its file name (for output names), its content, where its bytes are."""

    name: Name
    sha256: Sha256
    path: Name


class StyleInput(_Frozen):
    """One style image of the preset, resolved to a file and identified by content."""

    name: Name
    sha256: Sha256
    path: Name
    weight: Annotated[float, Field(gt=0, le=1e6, allow_inf_nan=False)]


class Caps(_Frozen):
    """Limits a preset cannot exceed (SPEC §4: above a cap the job fails ``too_large``)."""

    max_steps: Annotated[int, Field(ge=1)] = 2000
    max_size: Annotated[int, Field(ge=16)] = 4096
    max_input_pixels: Annotated[int, Field(ge=1)] = 100_000_000
    memory_budget_mb: Annotated[int, Field(ge=0)] = 0  # 0: automatic (engine.runtime)

    def check(self, preset: Preset) -> None:
        problems = []
        if preset.steps > self.max_steps:
            problems.append(f"the preset asks for {preset.steps} steps; this server allows at most "
                            f"{self.max_steps} (config max_steps)")
        if preset.coarse_to_fine and preset.coarse_to_fine.steps > self.max_steps:
            problems.append(f"the preset asks for {preset.coarse_to_fine.steps} steps per finer scale "
                            f"(coarse_to_fine.steps); this server allows at most {self.max_steps} (config max_steps)")
        if preset.size > self.max_size:
            problems.append(f"the preset asks for size {preset.size}; this server allows at most "
                            f"{self.max_size} (config max_size)")
        if problems:
            raise JobFailure("\n".join(problems), kind=FailureKind.TOO_LARGE)


class JobSpec(_Frozen):
    version: int = SPEC_VERSION
    job_id: Name
    input: InputRef
    preset: Preset
    preset_source: Annotated[str, Field(max_length=8192)] = ""
    styles: Annotated[tuple[StyleInput, ...], Field(min_length=1, max_length=8)]
    caps: Caps = Caps()

    @classmethod
    def make(cls, job_id: str, image: Path, image_sha256: str, preset: Preset, preset_source: str,
             styles: Sequence[tuple[Path, float]], caps: Caps, style_sha256: Sequence[str]) -> JobSpec:
        """A description of ``image`` rendered with ``preset`` (its ``style`` already
        resolved to ``styles``), checked against ``caps``: a preset above a cap fails
        here, before any work."""
        caps.check(preset)
        return cls(
            job_id=job_id,
            input=InputRef(name=image.name, sha256=image_sha256, path=str(image.absolute())),
            preset=preset.model_copy(update={"extends": None}),
            preset_source=preset_source,
            styles=tuple(StyleInput(name=p.name, sha256=sha, path=str(p.absolute()), weight=w)
                         for (p, w), sha in zip(styles, style_sha256, strict=True)),
            caps=caps,
        )

    @classmethod
    def for_files(cls, job_id: str, image: Path, preset: Preset, preset_source: str,
                  styles: Sequence[tuple[Path, float]], caps: Caps) -> JobSpec:
        """``make``, hashing the image and the style files (``stylefold run``)."""
        return cls.make(job_id, image, sha256_regular(image, follow_symlinks=True), preset, preset_source, styles, caps,
                        [sha256_regular(path, follow_symlinks=True) for path, _ in styles])

    def identity(self) -> str:
        """What the result depends on, as a digest: the input's and styles' contents,
        the effective preset and the caps (never where the files happen to be). A
        checkpoint records it; one made under another identity is not resumed."""
        return _digest({
            "input": self.input.sha256,
            "preset": self.preset.effective(),
            "styles": [(s.sha256, s.weight) for s in self.styles],
            "caps": self.caps.model_dump(),
        })

    def result_key(self) -> str:
        """Same key, same picture: the effective preset plus the styles' contents (the
        input's sha256 is kept beside it in the journal)."""
        return result_key(self.preset, [(s.sha256, s.weight) for s in self.styles])

    def to_json(self) -> str:
        # json.dumps, not pydantic's JSON: a Linux file name that is not UTF-8 reaches
        # Python with surrogate escapes, which json.dumps escapes and pydantic refuses.
        return json.dumps(self.model_dump(mode="json"), indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> JobSpec:
        return cls.model_validate(json.loads(text))


def result_key(preset: Preset, styles: Sequence[tuple[str, float]]) -> str:
    digest = hashlib.sha256(json.dumps(preset.effective(), sort_keys=True).encode())
    for sha, weight in styles:
        digest.update(f"{sha}:{weight}".encode())
    return digest.hexdigest()


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
