"""Video/audio header probes: a WAV written by Python's own encoder, ISO BMFF files built box by box."""

from __future__ import annotations

import json
import struct
import wave
from pathlib import Path
from typing import Any

import pytest

from integrations.storage import open_source
from tasks.media import ProbeError, probe


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def full(kind: bytes, version: int, payload: bytes) -> bytes:
    return box(kind, bytes([version, 0, 0, 0]) + payload)


def mp4(width: int, height: int, fps: int, seconds: int, *, moov_last: bool, version: int = 0) -> bytes:
    """A minimal MP4 as ISO/IEC 14496-12 lays it out: ftyp, mdat, moov(mvhd, trak(tkhd, mdia...))."""
    scale, frames = 1000, fps * seconds
    if version == 1:
        mvhd = full(b"mvhd", 1, b"\0" * 16 + struct.pack(">IQ", scale, seconds * scale) + b"\0" * 80)
        tkhd = full(b"tkhd", 1, b"\0" * 16 + struct.pack(">II", 1, 0) + b"\0" * 8 + b"\0" * 52
                    + struct.pack(">II", width << 16, height << 16))  # fmt: skip
        mdhd = full(b"mdhd", 1, b"\0" * 16 + struct.pack(">IQ", fps * 100, frames * 100) + b"\0" * 4)
    else:
        mvhd = full(b"mvhd", 0, b"\0" * 8 + struct.pack(">II", scale, seconds * scale) + b"\0" * 80)
        tkhd = full(b"tkhd", 0, b"\0" * 8 + struct.pack(">III", 1, 0, 0) + b"\0" * 52
                    + struct.pack(">II", width << 16, height << 16))  # fmt: skip
        mdhd = full(b"mdhd", 0, b"\0" * 8 + struct.pack(">II", fps * 100, frames * 100) + b"\0" * 4)
    hdlr = full(b"hdlr", 0, b"\0" * 4 + b"vide" + b"\0" * 12 + b"video\0")
    stts = full(b"stts", 0, struct.pack(">III", 1, frames, 100))
    sound = box(b"trak", box(b"mdia", full(b"hdlr", 0, b"\0" * 4 + b"soun" + b"\0" * 13)))
    trak = box(b"trak", tkhd + box(b"mdia", mdhd + hdlr + box(b"minf", box(b"stbl", stts))))
    moov = box(b"moov", mvhd + sound + trak)
    parts = [box(b"ftyp", b"isom\0\0\0\0isomavc1"), box(b"mdat", b"\x00" * 50_000)]
    return b"".join([*parts, moov] if moov_last else [parts[0], moov, parts[1]])


def wav(path: Path, rate: int, channels: int, seconds: float) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\0\1" * channels * int(rate * seconds))


@pytest.mark.parametrize(("moov_last", "version"), [(True, 0), (False, 0), (True, 1)])
def test_mp4_probe_reads_dimensions_duration_and_fps(tmp_path: Path, moov_last: bool, version: int) -> None:
    (tmp_path / "clip.mp4").write_bytes(mp4(1920, 1080, 25, 4, moov_last=moov_last, version=version))
    store = open_source(str(tmp_path)).store
    size = (tmp_path / "clip.mp4").stat().st_size
    assert probe(store, "clip.mp4", size) == {
        "fps": 25.0, "duration": 4.0, "width": 1920, "height": 1080, "fileSize": size, "mimeType": "video/mp4",
    }  # fmt: skip


def test_wav_probe_and_garbage(tmp_path: Path) -> None:
    wav(tmp_path / "a.wav", 22050, 2, 1.5)
    (tmp_path / "bad.wav").write_bytes(b"not a wav at all")
    (tmp_path / "bad.mp4").write_bytes(b"\0\0\0\x08free" * 3)
    store = open_source(str(tmp_path)).store
    meta = probe(store, "a.wav", (tmp_path / "a.wav").stat().st_size)
    assert meta == {
        "duration": 1.5, "fileSize": (tmp_path / "a.wav").stat().st_size, "mimeType": "audio/wav",
        "sampleRate": 22050, "bitDepth": 16, "codec": "pcm", "numChannels": 2,
    }  # fmt: skip
    for name in ("bad.wav", "bad.mp4"):
        with pytest.raises(ProbeError):
            probe(store, name, (tmp_path / name).stat().st_size)


def test_probe_media_fills_the_manifest_and_bad_files_go_without(cli: Any, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "clip.mov").write_bytes(mp4(640, 480, 30, 2, moov_last=True))
    (data / "broken.mp4").write_bytes(b"\0" * 100)
    wav(data / "voice.wav", 16000, 1, 2.0)
    result = cli("manifest", str(data), "--out", str(tmp_path / "m"), "--probe-media", "--json")
    assert result.code == 0, result.stderr
    manifest = json.loads((tmp_path / "m" / "manifest-00001.json").read_text())
    videos = {v["title"]: v for v in manifest["videos"]}
    assert videos["clip.mov"]["videoMetadata"]["fps"] == 30.0
    assert videos["clip.mov"]["videoMetadata"]["mimeType"] == "video/quicktime"
    assert "videoMetadata" not in videos["broken.mp4"], "an unreadable file goes without; Encord scans it"
    assert manifest["audio"][0]["audioMetadata"]["sampleRate"] == 16000
