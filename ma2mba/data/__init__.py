"""Training and evaluation data: ShapeWorld, a procedural long-video QA world."""

from .shapeworld import (
    COLORS,
    KINDS,
    QUESTION_KINDS,
    QA,
    SHAPES,
    Appearance,
    Scene,
    ShapeWorldError,
    Video,
    format_time,
    generate,
    write_mp4,
)

__all__ = [
    "COLORS",
    "KINDS",
    "QUESTION_KINDS",
    "QA",
    "SHAPES",
    "Appearance",
    "Scene",
    "ShapeWorldError",
    "Video",
    "format_time",
    "generate",
    "write_mp4",
]
