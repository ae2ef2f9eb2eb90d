"""Human-readable quantities, for messages at every layer."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_seconds(seconds: float, precision: int = 0) -> str:
    """``90000`` -> ``1.0d``, ``1500`` -> ``25.0m``, ``42.5`` -> ``42s`` (``precision``
    decimals below a minute)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.{precision}f}s"
