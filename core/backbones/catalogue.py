"""What backbones there are: the offline ones (with their layers) and any name timm knows (hub)."""

from __future__ import annotations

from core.backbones.sources import _SOURCES, BackboneInfo
from core.errors import BackboneUnavailableError


def list_backbones() -> list[BackboneInfo]:
    """The backbones with an offline weight source, in display order."""
    return [s.info for s in _SOURCES.values()]



def _guess_kind(name: str) -> str:
    base = name.split(".")[0]
    vit_prefixes = ("vit_", "deit", "beit", "eva", "flexivit", "samvit", "vitamin", "naflexvit")
    return "vit" if base.startswith(vit_prefixes) or "dinov2" in base else "cnn"


def get_backbone_info(name: str) -> BackboneInfo:
    """Info for ``name``; for names only timm knows, kind is guessed and layers are filled in at load time."""
    if name in _SOURCES:
        return _SOURCES[name].info
    import timm

    if timm.is_model(name):
        return BackboneInfo(
            name=name, kind=_guess_kind(name), source_package="timm hub", licence="see the model card",
            default_layers=(), all_layers=(),
        )
    raise BackboneUnavailableError(
        f"Unknown backbone {name!r}: it is neither one of the offline backbones nor a timm model name.",
        f"Choose one of: {', '.join(_SOURCES)}.",
    )


