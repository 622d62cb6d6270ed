"""The JSON form of a network's config dataclass, stored in its safetensors metadata (``weights.save_network``)."""
from __future__ import annotations

import json
from dataclasses import asdict, fields

from ..errors import CPGDInputError


class JsonConfig:
    """Mixin for config dataclasses: ``to_json`` / ``from_json``.

    Reading refuses fields the class does not know, so a weights file of another network or of a newer release
    is named as such instead of loading into the wrong shapes. JSON lists come back as tuples (the configs' own
    sequence type)."""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, text: str):
        data = json.loads(text)
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - known
        if unknown:
            raise CPGDInputError(f"{cls.__name__} has unknown fields {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
