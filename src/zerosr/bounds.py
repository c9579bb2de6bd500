"""Safety bounds: every derived or adapted value is clamped into a range before it is used."""


def clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))
