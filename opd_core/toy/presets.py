"""Named student/teacher pairs of the toy world, usable anywhere a model path is accepted."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets"  # the shipped checkpoints (`opd-lab toy build`)

# preset name -> (student folder, teacher folder) under the shipped assets
PRESETS: dict[str, tuple[str, str]] = {
    "toy:matched": ("student", "teacher"),
    "toy:mismatched": ("student", "teacher_mismatched"),
}


def resolve_pair(name: str) -> tuple[Path, Path] | None:
    """Return (student_dir, teacher_dir) for a preset name, or None when the name is not a preset."""
    pair = PRESETS.get(name)
    if pair is None:
        return None
    return ASSETS_DIR / pair[0], ASSETS_DIR / pair[1]
