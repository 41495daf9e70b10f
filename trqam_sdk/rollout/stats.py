"""Success-rate statistics: a success rate means little without its episode count and an interval.

The 95 % Wilson score interval is used because it stays inside [0, 1] and is not degenerate at 0 / n or n / n
(the normal approximation gives [0, 0] for 0 successes, which would claim certainty from 10 episodes).
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054
"""the standard normal's 97.5 % quantile (two-sided 95 %)"""


def wilson_interval(successes: int, episodes: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion ``successes / episodes`` (95 % by default)."""
    if isinstance(successes, bool) or isinstance(episodes, bool) or int(successes) != successes \
            or int(episodes) != episodes:
        raise TypeError(f"successes and episodes must be whole numbers, got {successes!r}, {episodes!r}")
    if episodes < 1:
        raise ValueError(f"a success interval needs at least one episode, got episodes={episodes}")
    if not 0 <= successes <= episodes:
        raise ValueError(f"successes must be in [0, episodes={episodes}], got {successes}")
    if z <= 0:
        raise ValueError(f"z must be positive, got {z}")
    n, p = float(episodes), successes / episodes
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def format_success(successes: int, episodes: int) -> str:
    """'62.5% [55.6, 68.9] (n=200)': the rate, its 95 % Wilson interval and the episode count, in percent."""
    lo, hi = wilson_interval(successes, episodes)
    return f"{100 * successes / episodes:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] (n={episodes})"
