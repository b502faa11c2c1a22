"""Header probes for video (MP4/MOV) and audio (WAV), with ranged reads only.

With `--probe-media`, the manifest carries `videoMetadata` / `audioMetadata`, so Encord need
not download the file to learn them. Only box/chunk headers and the `moov` box are read, never
the media data. A file the probe cannot read simply goes without; Encord then scans it itself.
"""

from __future__ import annotations

import mimetypes
import struct
from typing import Any

from integrations.storage.base import ObjectStore

MAX_MOOV_BYTES = 16 * 1024 * 1024
MAX_TOP_LEVEL_BOXES = 64


class ProbeError(Exception):
    pass


def _boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of the boxes in data[start:end]."""
    end = len(data) if end is None else end
    out = []
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1:
            size = struct.unpack(">Q", data[pos + 8 : pos + 16])[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            break
        out.append((kind, pos + header, pos + size))
        pos += size
    return out


def _find(data: bytes, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    for k, s, e in _boxes(data, start, end):
        if k == kind:
            return s, e
    return None


def _time_header(data: bytes, start: int) -> tuple[int, int]:
    """(timescale, duration) of an mvhd/mdhd payload, version 0 or 1."""
    version = data[start]
    if version == 1:
        return struct.unpack(">IQ", data[start + 20 : start + 32])
    return struct.unpack(">II", data[start + 12 : start + 20])


def _read_moov(store: ObjectStore, key: str, size: int) -> bytes:
    pos = 0
    for _ in range(MAX_TOP_LEVEL_BOXES):
        if pos + 8 > size:
            break
        head = store.read_range(key, pos, 16)
        if len(head) < 8:
            break
        box_size, kind = struct.unpack(">I4s", head[:8])
        header = 8
        if box_size == 1:
            box_size = struct.unpack(">Q", head[8:16])[0]
            header = 16
        elif box_size == 0:
            box_size = size - pos
        if box_size < header:
            break
        if kind == b"moov":
            if box_size > MAX_MOOV_BYTES:
                raise ProbeError("moov box too large to probe")
            return store.read_range(key, pos, box_size)
        pos += box_size
    raise ProbeError("no moov box")


def probe_mp4(store: ObjectStore, key: str, size: int) -> dict[str, Any]:
    moov = _read_moov(store, key, size)
    inner = _boxes(moov, 8 if moov[4:8] == b"moov" else 16)
    mvhd = next(((s, e) for k, s, e in inner if k == b"mvhd"), None)
    if mvhd is None:
        raise ProbeError("no mvhd box")
    timescale, duration_units = _time_header(moov, mvhd[0])
    if not timescale:
        raise ProbeError("zero timescale")
    for kind, start, end in inner:
        if kind != b"trak":
            continue
        mdia = _find(moov, start, end, b"mdia")
        hdlr = _find(moov, *mdia, b"hdlr") if mdia else None
        if hdlr is None or moov[hdlr[0] + 8 : hdlr[0] + 12] != b"vide":
            continue
        tkhd = _find(moov, start, end, b"tkhd")
        mdhd = _find(moov, *mdia, b"mdhd") if mdia else None
        if tkhd is None or mdhd is None or mdia is None:
            continue
        base = tkhd[0] + (88 if moov[tkhd[0]] == 1 else 76)  # width, height: 16.16 fixed point
        width, height = (v >> 16 for v in struct.unpack(">II", moov[base : base + 8]))
        track_scale, track_units = _time_header(moov, mdhd[0])
        minf = _find(moov, *mdia, b"minf")
        stbl = _find(moov, *minf, b"stbl") if minf else None
        stts = _find(moov, *stbl, b"stts") if stbl else None
        samples = 0
        if stts is not None:
            (count,) = struct.unpack(">I", moov[stts[0] + 4 : stts[0] + 8])
            for i in range(count):
                off = stts[0] + 8 + 8 * i
                samples += struct.unpack(">I", moov[off : off + 4])[0]
        track_seconds = track_units / track_scale if track_scale else 0.0
        fps = round(samples / track_seconds, 3) if track_seconds else 0.0
        return {
            "fps": fps,
            "duration": round(duration_units / timescale, 3),
            "width": width,
            "height": height,
            "fileSize": size,
            "mimeType": mimetypes.guess_type(key)[0] or "video/mp4",
        }
    raise ProbeError("no video track")


def probe_wav(store: ObjectStore, key: str, size: int) -> dict[str, Any]:
    head = store.read_range(key, 0, 12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        raise ProbeError("not a RIFF/WAVE file")
    pos = 12
    fmt: tuple[int, int, int, int, int, int] | None = None
    while pos + 8 <= size:
        chunk = store.read_range(key, pos, 8 + 16)
        kind, length = chunk[:4], struct.unpack("<I", chunk[4:8])[0]
        if kind == b"fmt ":
            fmt = struct.unpack("<HHIIHH", chunk[8:24])
        elif kind == b"data":
            if fmt is None:
                raise ProbeError("data chunk before fmt chunk")
            codec, channels, rate, byte_rate, _, bits = fmt
            return {
                "duration": round(length / byte_rate, 3) if byte_rate else 0.0,
                "fileSize": size,
                "mimeType": "audio/wav",
                "sampleRate": rate,
                "bitDepth": bits,
                "codec": "pcm" if codec == 1 else f"wav-{codec}",
                "numChannels": channels,
            }
        pos += 8 + length + (length & 1)
    raise ProbeError("no data chunk")


def probe(store: ObjectStore, key: str, size: int) -> dict[str, Any] | None:
    """Media metadata for the manifest, or None when this kind of file has no probe."""
    name = key.lower()
    if name.endswith((".mp4", ".m4v", ".mov")):
        return probe_mp4(store, key, size)
    if name.endswith(".wav"):
        return probe_wav(store, key, size)
    return None
