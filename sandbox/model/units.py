"""Sizes ("512K", "256M", "1.5G", binary) and durations ("2", "2s", "500ms").

Both raise ValueError with a message that says what is allowed; callers add
where the value came from (a flag or a profile key).
"""

from __future__ import annotations

_SIZE_SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_TIME_SUFFIX = (("ms", 0.001), ("us", 0.000001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))

SIZE_HELP = "a size such as 512K, 256M or 1.5G (binary units)"
DURATION_HELP = "a duration such as 2, 2s, 500ms or 1.5m"


def _number(text: str) -> float:
    # float() accepts "nan", "inf", "1e3" and "_" separators: allow digits and one dot only.
    if not text or text.count(".") > 1 or not (text.isascii() and text.replace(".", "").isdigit()):
        raise ValueError(text)
    return float(text)


def parse_size(value: str | int) -> int:
    """Bytes from "256M"-style text or a non-negative int."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not {SIZE_HELP}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is not {SIZE_HELP}")
        return value
    text = value.strip().upper()
    if text.endswith("IB"):
        text = text[:-2]
    elif text.endswith("B") and len(text) > 1 and text[-2] in "KMGT":
        text = text[:-1]
    suffix = text[-1:] if text[-1:] in _SIZE_SUFFIX and not text[-1:].isdigit() else ""
    try:
        number = _number(text[: len(text) - len(suffix)])
    except ValueError:
        raise ValueError(f"{value!r} is not {SIZE_HELP}") from None
    scaled = number * _SIZE_SUFFIX[suffix]
    if scaled > 1 << 62:  # before int(): "9" * 400 is a float infinity
        raise ValueError(f"{value!r} is too large")
    return int(scaled)


def parse_duration(value: str | int | float) -> float:
    """Seconds from "500ms"-style text or a non-negative number."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not {DURATION_HELP}")
    if isinstance(value, (int, float)):
        if not 0 <= value < 1e9:
            raise ValueError(f"{value!r} is not {DURATION_HELP}")
        return float(value)
    text = value.strip().lower()
    scale = 1.0
    for suffix, factor in _TIME_SUFFIX:
        if text.endswith(suffix):
            text, scale = text[: -len(suffix)], factor
            break
    try:
        seconds = _number(text) * scale
    except ValueError:
        raise ValueError(f"{value!r} is not {DURATION_HELP}") from None
    if seconds >= 1e9:
        raise ValueError(f"{value!r} is too large")
    return seconds


def format_size(size: int) -> str:
    """The shortest exact unit form: 268435456 -> "256M"."""
    for suffix in ("T", "G", "M", "K"):
        unit = _SIZE_SUFFIX[suffix]
        if size and size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def format_duration(seconds: float) -> str:
    if seconds and seconds < 1 and round(seconds * 1000, 6) == int(seconds * 1000):
        return f"{int(seconds * 1000)}ms"
    return f"{seconds:g}s"
