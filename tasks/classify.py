"""Decide what Encord item type an object is, by extension first and content type second."""

from __future__ import annotations

from encord_ingest.models import ItemKind

EXTENSION_KINDS: dict[str, ItemKind] = {
    **dict.fromkeys(("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "avif"), ItemKind.IMAGE),
    **dict.fromkeys(("mp4", "mov", "webm", "mkv", "avi", "m4v"), ItemKind.VIDEO),
    **dict.fromkeys(("mp3", "wav", "flac", "aac", "m4a", "ogg", "opus", "eac3"), ItemKind.AUDIO),
    "pdf": ItemKind.PDF,
    **dict.fromkeys(("txt", "html", "htm", "md", "xml"), ItemKind.TEXT),
    **dict.fromkeys(("nii", "nii.gz"), ItemKind.NIFTI),
    **dict.fromkeys(("dcm", "dicom"), ItemKind.DICOM),
}

_BY_CONTENT_TYPE_PREFIX: tuple[tuple[str, ItemKind], ...] = (
    ("image/", ItemKind.IMAGE),
    ("video/", ItemKind.VIDEO),
    ("audio/", ItemKind.AUDIO),
    ("application/pdf", ItemKind.PDF),
    ("text/plain", ItemKind.TEXT),
    ("text/html", ItemKind.TEXT),
    ("text/markdown", ItemKind.TEXT),
    ("application/dicom", ItemKind.DICOM),
)

# Types that look like media but Encord cannot render; reported, not guessed.
_UNSUPPORTED_CONTENT_TYPES = ("image/svg+xml", "image/x-icon", "image/vnd.adobe.photoshop")


def extension(key: str) -> str:
    """Lower-case extension of the key's last path part ("" if none); `nii.gz` counts as one.

    Runs for every listed object, so it slices once instead of splitting the path.
    """
    dot = key.rfind(".")
    if dot < 0 or key.find("/", dot) >= 0:  # no dot, or the last dot is in a folder name
        return ""
    ext = key[dot + 1 :].lower()
    if ext == "gz" and key[-7:].lower() == ".nii.gz":
        return "nii.gz"
    return ext


def by_extension(key: str) -> ItemKind | None:
    return EXTENSION_KINDS.get(extension(key))


def by_content_type(content_type: str) -> ItemKind | None:
    ct = content_type.split(";", 1)[0].strip().lower()
    if not ct or ct in _UNSUPPORTED_CONTENT_TYPES:
        return None
    for prefix, kind in _BY_CONTENT_TYPE_PREFIX:
        if ct.startswith(prefix):
            return kind
    return None


def unsupported_reason(key: str, content_type: str | None) -> str:
    ext = extension(key)
    what = f"extension .{ext}" if ext else "no extension"
    ct = f", content type {content_type!r}" if content_type else ""
    return f"unsupported file type ({what}{ct})"
