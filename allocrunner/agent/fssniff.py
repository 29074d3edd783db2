"""Content sniffing for ``/v1/client/fs/stat``: the MIME type Go's server would guess.

Nomad reports a file's ``ContentType`` as Go's ``http.DetectContentType`` finds it
from the first 512 bytes. `sniff_content_type` follows the same signatures and the
same order (markup, then fixed prefixes, RIFF/IFF containers, MP4, then text or
binary), so a client sees the type a Nomad agent would report.

Threads: none. Locks: none. Owner: a pure function, called by `fsapi.stat`.
"""

from __future__ import annotations

from typing import Final

__all__ = ["SNIFF_LEN", "sniff_content_type"]

SNIFF_LEN: Final = 512
"""How many leading bytes decide the type."""

_WS: Final = b"\t\n\x0c\r "
_HTML_TAGS: Final = (
    b"<!DOCTYPE HTML", b"<HTML", b"<HEAD", b"<SCRIPT", b"<IFRAME", b"<H1", b"<DIV",
    b"<FONT", b"<TABLE", b"<A", b"<STYLE", b"<TITLE", b"<B", b"<BODY", b"<BR", b"<P",
    b"<!--",
)  # fmt: skip
_PREFIXES: Final = (
    (b"%PDF-", "application/pdf"),
    (b"%!PS-Adobe-", "application/postscript"),
    (b"\xfe\xff", "text/plain; charset=utf-16be"),
    (b"\xff\xfe", "text/plain; charset=utf-16le"),
    (b"\xef\xbb\xbf", "text/plain; charset=utf-8"),
    (b"\x00\x00\x01\x00", "image/x-icon"),
    (b"\x00\x00\x02\x00", "image/x-icon"),
    (b"BM", "image/bmp"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"ID3", "audio/mpeg"),
    (b"OggS\x00", "application/ogg"),
    (b"MThd\x00\x00\x00\x06", "audio/midi"),
    (b"\x1a\x45\xdf\xa3", "video/webm"),
    (b"\x00\x01\x00\x00", "font/ttf"),
    (b"OTTO", "font/otf"),
    (b"ttcf", "font/collection"),
    (b"wOFF", "font/woff"),
    (b"wOF2", "font/woff2"),
    (b"\x1f\x8b\x08", "application/x-gzip"),
    (b"PK\x03\x04", "application/zip"),
    (b"Rar!\x1a\x07\x00", "application/x-rar-compressed"),
    (b"Rar!\x1a\x07\x01\x00", "application/x-rar-compressed"),
    (b"\x00asm", "application/wasm"),
)
_CONTAINERS: Final = (  # (head, tag at 8..) of RIFF/IFF containers
    (b"RIFF", b"WEBPVP", "image/webp"),
    (b"RIFF", b"WAVE", "audio/wave"),
    (b"RIFF", b"AVI ", "video/avi"),
    (b"FORM", b"AIFF", "audio/aiff"),
)
_BINARY: Final = frozenset([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x1B), *range(0x1C, 0x20)])


def sniff_content_type(data: bytes) -> str:
    """The MIME type Go's ``http.DetectContentType`` gives `data` (its first 512 bytes
    decide): markup, common image, audio, video, font and archive signatures, else
    UTF-8 text when no byte is binary, else ``application/octet-stream``."""
    data = data[:SNIFF_LEN]
    rest = data.lstrip(_WS)
    for tag in _HTML_TAGS:
        if len(rest) > len(tag) and rest[: len(tag)].upper() == tag and rest[len(tag)] in b" >":
            return "text/html; charset=utf-8"
    if rest.startswith(b"<?xml"):
        return "text/xml; charset=utf-8"
    for prefix, content_type in _PREFIXES:
        if data.startswith(prefix):
            return content_type
    for head, tag, content_type in _CONTAINERS:
        if data.startswith(head) and data[8 : 8 + len(tag)] == tag:
            return content_type
    if _is_mp4(data):
        return "video/mp4"
    if not any(byte in _BINARY for byte in rest):
        return "text/plain; charset=utf-8"
    return "application/octet-stream"


def _is_mp4(data: bytes) -> bool:
    if len(data) < 12:
        return False
    box = int.from_bytes(data[:4], "big")
    if len(data) < box or box % 4 or data[4:8] != b"ftyp":
        return False
    return any(data[at : at + 3] == b"mp4" for at in range(8, box, 4) if at != 12)
