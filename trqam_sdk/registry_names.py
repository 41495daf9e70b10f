"""The one rule for names in the SDK's registries (methods, benchmarks, reward sources): they appear in CLI flags,
YAML files and run folders, so letters, digits, ``_`` and ``-`` only."""

from __future__ import annotations


def check_registry_name(name: str, what: str) -> None:
    """A clear error (``<what> name 'x y': use letters, ...``) for a name a registry cannot take."""
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"{what} name {name!r}: use letters, digits, '_' or '-'")
