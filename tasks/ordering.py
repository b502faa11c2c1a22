"""Sort keys for the members of grouped items, as strings the ledger can order by."""

from __future__ import annotations

import re

_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> str:
    """Sorts like a human reads numbers: frame_2 before frame_10."""
    return _DIGITS.sub(lambda m: m.group(1).zfill(20), text)[:255]


def dicom_sort_key(instance_number: float, position_z: float, key: str) -> str:
    """Slices by InstanceNumber, then position along the patient axis, then file name."""
    return f"{instance_number + 1e9:020.4f}|{position_z + 1e9:020.4f}|{natural_key(key)}"[:255]
