"""Resume or refuse: a run directory is resumed only by the run that made it.

Every resumable run (a fine-tune's checkpoint, a search, dynamic pruning, block removal) records the settings
that shape it. A rerun with the same settings resumes; one with other settings is refused with the names of the
settings that differ, never silently mixed with the old results.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["differences", "refuse_changes", "resume_state"]


def differences(saved: Mapping[str, Any], ours: Mapping[str, Any], free: Iterable[str] = ()) -> list[str]:
    """The keys whose values differ between two settings dicts, except those in `free`."""
    free = set(free)
    return sorted(k for k in set(saved) | set(ours) if k not in free and saved.get(k) != ours.get(k))


def refuse_changes(saved: Mapping[str, Any], ours: Mapping[str, Any], where: str | Path, what: str,
                   free: Iterable[str] = ()) -> None:
    """Raise a ConfigError naming the settings that differ, unless `saved` and `ours` agree (but for `free`)."""
    diff = differences(saved, ours, free)
    if not diff:
        return
    # "subject" is the digest of the model and data a run works on (measure.run_digest).
    other = [k for k in diff if k != "subject"]
    parts = ([f"other settings ({', '.join(other)})"] if other else []) + \
            (["another model or other validation data"] if "subject" in diff else [])
    raise ConfigError(f"{where} holds a {what} with {' and '.join(parts)}; use the same ones to resume it, or "
                      "another directory")


def resume_state(path: str | Path, fresh: dict[str, Any], what: str, free: tuple[str, ...] = ()) -> dict[str, Any]:
    """The saved run state at `path` (a JSON file) if there is one, else `fresh`.

    A saved state whose "config" differs from fresh["config"] (settings, and the digest of model and data) is
    refused; the settings named in `free` may differ (they extend a run rather than change it) and take their
    new values.
    """
    path = Path(path)
    if not path.exists():
        return fresh
    try:
        saved = json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path} is not a readable run state ({exc}); use another directory") from exc
    config = saved.get("config") if isinstance(saved, dict) else None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} is not a cnnzip {what} state; use another directory")
    refuse_changes(config, fresh["config"], path.parent, what, free)
    config.update({k: fresh["config"][k] for k in free if k in fresh["config"]})
    return saved
