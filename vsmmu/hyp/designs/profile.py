"""A design's profile: its policy (`Design`), a summary, and its choices with sources."""

from __future__ import annotations

from dataclasses import dataclass

from ..transfer import Design


@dataclass(frozen=True)
class Choice:
    topic: str
    choice: str
    source: str  # where the choice comes from; "source silent: ..." where we guessed

    def as_dict(self) -> dict[str, str]:
        return {"topic": self.topic, "choice": self.choice, "source": self.source}


@dataclass(frozen=True)
class Profile:
    design: Design
    summary: str
    choices: tuple[Choice, ...]

    @property
    def name(self) -> str:
        return self.design.name

    def as_dict(self) -> dict:
        return {"name": self.name, "summary": self.summary,
                "choices": [c.as_dict() for c in self.choices]}
