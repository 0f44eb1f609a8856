"""CIEDE2000 colour difference of CIELAB rows, in numpy.

The formula and its edge cases follow Sharma, Wu and Dalal (2005), "The CIEDE2000
color-difference formula: implementation notes, supplementary test data, and mathematical
observations", Color Research & Application 30(1), 21-30, doi:10.1002/col.20070.
"""

from __future__ import annotations

import numpy as np

_25_POW_7 = 25.0 ** 7
# Hue differences within this many degrees of 180 take the "|h1' - h2'| <= 180" branch of
# Sharma's eq. 10 and 14: for colours opposite each other (test pair 14), h2' - h1' is 180 in
# exact arithmetic, and arctan2's last-bit rounding must not flip the mean hue by 180 degrees.
_HUE_SLACK = 1e-9


def ciede2000(lab_1: np.ndarray, lab_2: np.ndarray, k_l: float = 1.0, k_c: float = 1.0,
              k_h: float = 1.0) -> np.ndarray:
    """CIEDE2000 colour difference of paired CIELAB colours.

    Parameters
    ----------
    lab_1, lab_2 : array_like of shape (..., 3)
        CIELAB colours (L* 0-100, a*, b*); broadcast against each other.
    k_l, k_c, k_h : float
        Parametric weights of lightness, chroma and hue (1 for the reference conditions).

    Returns
    -------
    delta_e : ndarray of shape (...), float64
        Delta-E 2000 of each pair; symmetric in its arguments.
    """
    l_1, a_1, b_1 = np.moveaxis(np.asarray(lab_1, np.float64), -1, 0)
    l_2, a_2, b_2 = np.moveaxis(np.asarray(lab_2, np.float64), -1, 0)
    c_mean_7 = ((np.hypot(a_1, b_1) + np.hypot(a_2, b_2)) / 2) ** 7
    g = 0.5 * (1 - np.sqrt(c_mean_7 / (c_mean_7 + _25_POW_7)))
    a_1, a_2 = (1 + g) * a_1, (1 + g) * a_2
    c_1, c_2 = np.hypot(a_1, b_1), np.hypot(a_2, b_2)
    h_1 = np.degrees(np.arctan2(b_1, a_1)) % 360  # arctan2(0, 0) = 0: Sharma's h' = 0
    h_2 = np.degrees(np.arctan2(b_2, a_2)) % 360
    h_diff, h_mean = _hue_difference_and_mean(h_1, h_2, c_1 * c_2 == 0)

    delta_l = l_2 - l_1
    delta_c = c_2 - c_1
    delta_h = 2 * np.sqrt(c_1 * c_2) * np.sin(np.radians(h_diff / 2))
    l_mean = (l_1 + l_2) / 2
    c_mean = (c_1 + c_2) / 2
    t = (1 - 0.17 * np.cos(np.radians(h_mean - 30)) + 0.24 * np.cos(np.radians(2 * h_mean))
         + 0.32 * np.cos(np.radians(3 * h_mean + 6)) - 0.20 * np.cos(np.radians(4 * h_mean - 63)))
    delta_theta = 30 * np.exp(-(((h_mean - 275) / 25) ** 2))
    r_c = 2 * np.sqrt(c_mean ** 7 / (c_mean ** 7 + _25_POW_7))
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / np.sqrt(20 + (l_mean - 50) ** 2)
    s_c = 1 + 0.045 * c_mean
    s_h = 1 + 0.015 * c_mean * t
    r_t = -np.sin(np.radians(2 * delta_theta)) * r_c
    term_l = delta_l / (k_l * s_l)
    term_c = delta_c / (k_c * s_c)
    term_h = delta_h / (k_h * s_h)
    return np.sqrt(term_l ** 2 + term_c ** 2 + term_h ** 2 + r_t * term_c * term_h)


def _hue_difference_and_mean(h_1: np.ndarray, h_2: np.ndarray,
                             achromatic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sharma's eq. 10 (delta h') and eq. 14 (mean h'), in degrees; 0 and h1'+h2' if a C' is 0."""
    diff = h_2 - h_1
    near = np.abs(diff) <= 180 + _HUE_SLACK
    h_diff = np.where(near, diff, np.where(diff > 0, diff - 360, diff + 360))
    total = h_1 + h_2
    h_mean = np.where(near, total / 2, np.where(total < 360, (total + 360) / 2, (total - 360) / 2))
    return np.where(achromatic, 0.0, h_diff), np.where(achromatic, total, h_mean)
