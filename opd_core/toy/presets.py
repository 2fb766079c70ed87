"""Named student/teacher pairs of the toy world, usable anywhere a model path is accepted."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets"  # the shipped checkpoints (`opd-lab toy build`)
ASSETS_V2_DIR = Path(__file__).resolve().parent / "assets_v2"  # world v2 (`opd-lab toy build --world v2`)

# preset name -> (student folder, teacher folder) under the shipped assets (v2's under assets_v2)
PRESETS: dict[str, tuple[str, str]] = {
    "toy:matched": ("student", "teacher"),
    "toy:mismatched": ("student", "teacher_mismatched"),
    "toy:matched-v2": ("student", "teacher"),
    "toy:mismatched-v2": ("student", "teacher_mismatched"),
}
# the task each preset's models were trained for (what a run should grade them on)
PRESET_TASKS: dict[str, str] = {"toy:matched": "toy:addition", "toy:mismatched": "toy:addition",
                                "toy:matched-v2": "toy:addition-v2", "toy:mismatched-v2": "toy:addition-v2"}


def resolve_pair(name: str) -> tuple[Path, Path] | None:
    """Return (student_dir, teacher_dir) for a preset name, or None when the name is not a preset."""
    pair = PRESETS.get(name)
    if pair is None:
        return None
    root = ASSETS_V2_DIR if name.endswith("-v2") else ASSETS_DIR
    return root / pair[0], root / pair[1]
