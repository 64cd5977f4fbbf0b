"""Haystack text for the long-context tasks, and needle insertion at chosen depths.

The haystack is real text already on the machine: by default the Python standard library's own
source (`sysconfig.get_paths()["stdlib"]`, *.py files, site-packages excluded), or any directory
of UTF-8 text files. Files are listed once (cached), visited in a seeded order and read lazily, so
a 1M-token haystack reads only the ~1 MB it needs. Synthetic filler exists for training only.

All lengths here are in bytes of UTF-8 (= model tokens, see schema.text_tokens).
"""
from __future__ import annotations

import functools
import os
import random
import sysconfig
from dataclasses import dataclass

from .schema import IMAGE_TOKEN

# Directories of the stdlib tree that are not the standard library itself.
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}

# A needle snaps to the nearest line start within this many bytes (capped at 2% of the haystack),
# so needles sit on their own line without moving their depth noticeably.
MAX_SNAP_BYTES = 256

_FILLER = (
    "The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.",
    "The river runs to the sea.", "Clouds drift over the hills.", "A bird sings in the morning.",
)


@dataclass(frozen=True)
class HaystackSource:
    """Where haystack text comes from.

    root: a directory of text files; None = the Python standard library.
    suffixes: file name endings to use; None = (".py",) for the stdlib, every file for a directory.
    synthetic: repeated filler sentences instead of real text (training only; callers enforce it).
    Files that are not UTF-8, contain NUL bytes, or contain the image placeholder are skipped.
    """

    root: str | None = None
    suffixes: tuple[str, ...] | None = None
    synthetic: bool = False

    def __post_init__(self) -> None:
        if self.root is not None and not os.path.isdir(self.root):
            raise ValueError(f"haystack_dir {self.root!r} is not a directory; pass a directory of text files or None")
        if self.suffixes is not None:
            if isinstance(self.suffixes, str) or not all(isinstance(s, str) and s for s in self.suffixes):
                raise ValueError(f"haystack_suffixes must be a list of file endings like ['.txt'], got {self.suffixes!r}")
            object.__setattr__(self, "suffixes", tuple(self.suffixes))

    @property
    def kind(self) -> str:
        return "synthetic" if self.synthetic else ("stdlib" if self.root is None else "dir")

    @property
    def directory(self) -> str:
        return os.path.abspath(self.root) if self.root is not None else stdlib_dir()

    def files(self) -> tuple[str, ...]:
        """Relative paths of candidate files, sorted (deterministic on every machine with the same tree)."""
        suffixes = self.suffixes if self.suffixes is not None else ((".py",) if self.root is None else None)
        return _list_files(self.directory, suffixes)

    def take(self, n_bytes: int, rng: random.Random) -> tuple[bytes, list[dict]]:
        """Exactly n_bytes of UTF-8 text ending in a newline, and where each piece came from.

        Returns (text, pieces) with pieces = [{"file", "start", "bytes"}] (byte offsets into each
        file; "file" is None for filler). The last piece is cut at a character boundary and padded
        with spaces (at most 3) so the length is exact.
        """
        if n_bytes < 1:
            raise ValueError(f"haystack needs at least 1 byte, got {n_bytes}")
        budget = n_bytes - 1  # the final newline
        chunks, pieces = _synthetic(budget, rng) if self.synthetic else self._real(budget, rng)
        text = b"".join(chunks)
        cut = _char_boundary(text, budget)
        pad = budget - cut
        if pieces:
            pieces[-1]["bytes"] -= len(text) - cut
        return text[:cut] + b" " * pad + b"\n", pieces

    def _real(self, budget: int, rng: random.Random) -> tuple[list[bytes], list[dict]]:
        files = self.files()
        order = list(range(len(files)))
        rng.shuffle(order)
        chunks, pieces, have, first = [], [], 0, True
        for i in order:
            if have >= budget:
                break
            data = _read(os.path.join(self.directory, files[i]))
            if data is None:
                continue
            start = _random_line_start(data, rng) if first else 0
            first = False
            part = data[start:]
            if not part.endswith(b"\n"):
                part += b"\n"  # files are separated by a line break
            chunks.append(part)
            pieces.append({"file": files[i], "start": start, "bytes": len(part)})
            have += len(part)
        if have < budget:
            raise ValueError(
                f"haystack {self.directory!r} holds only {have} bytes of usable text but {budget} are needed; "
                f"use a larger directory or a shorter length"
            )
        return chunks, pieces


def stdlib_dir() -> str:
    return os.path.abspath(sysconfig.get_paths()["stdlib"])


def snap_window(haystack_bytes: int) -> int:
    """How far (bytes) a needle may move to land on a line start."""
    return min(MAX_SNAP_BYTES, haystack_bytes // 50)


def insert_at_depths(haystack: bytes, inserts: list[tuple[float, bytes]]) -> tuple[bytes, list[dict]]:
    """Insert texts into the haystack at depths in [0, 1].

    Depth d means a fraction d of the haystack precedes the insert (RULER's definition): it goes
    at byte round(d * H), moved to the nearest line start within snap_window(H). Inserts keep
    their list order where depths tie or cross, so ordered statements (variable chains) stay
    ordered when given in order with sorted depths.
    Returns (context, spans) with one span per insert, in input order:
    {"byte_span": [s, e] in context, "haystack_offset": p, "actual_depth": p / H}.
    """
    size = len(haystack)
    window = snap_window(size)
    order = sorted(range(len(inserts)), key=lambda k: (inserts[k][0], k))
    offsets, last = {}, 0
    for k in order:
        p = max(_snap(haystack, round(inserts[k][0] * size), window), last)
        offsets[k], last = p, p
    parts, spans, cursor, shift = [], [None] * len(inserts), 0, 0
    for k in order:
        p, text = offsets[k], inserts[k][1]
        parts.append(haystack[cursor:p])
        cursor = p
        start = p + shift
        parts.append(text)
        shift += len(text)
        spans[k] = {"byte_span": [start, start + len(text)], "haystack_offset": p, "actual_depth": p / size if size else 0.0}
    parts.append(haystack[cursor:])
    return b"".join(parts), spans


def char_offset(text: bytes, byte_offset: int) -> int:
    """Character offset in the decoded text of a byte offset that sits on a character boundary."""
    return len(text[:byte_offset].decode("utf-8"))


# ---------------------------------------------------------------------------- internals
@functools.lru_cache(maxsize=8)
def _list_files(directory: str, suffixes: tuple[str, ...] | None) -> tuple[str, ...]:
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in filenames:
            if suffixes is None or name.endswith(suffixes):
                found.append(os.path.relpath(os.path.join(dirpath, name), directory))
    if not found:
        raise ValueError(f"no haystack files ending in {suffixes} under {directory!r}")
    return tuple(sorted(found))


@functools.lru_cache(maxsize=512)
def _read(path: str) -> bytes | None:
    """File bytes if usable as haystack (UTF-8 text without NULs or image placeholders), else None."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if not data or b"\0" in data or IMAGE_TOKEN.encode() in data:
        return None
    return data


def _random_line_start(data: bytes, rng: random.Random) -> int:
    nl = data.find(b"\n", rng.randrange(len(data)))
    return 0 if nl < 0 or nl + 1 >= len(data) else nl + 1


def _synthetic(budget: int, rng: random.Random) -> tuple[list[bytes], list[dict]]:
    chunks, have = [], 0
    while have < budget:
        s = (rng.choice(_FILLER) + " ").encode()
        chunks.append(s)
        have += len(s)
    return chunks, [{"file": None, "start": 0, "bytes": have}]


def _char_boundary(text: bytes, limit: int) -> int:
    """Largest cut <= limit that does not split a UTF-8 character."""
    cut = min(limit, len(text))
    while 0 < cut < len(text) and (text[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut


def _snap(haystack: bytes, target: int, window: int) -> int:
    """Nearest line start to target within window; else the nearest char boundary at or before it."""
    size = len(haystack)
    target = min(max(target, 0), size)
    if target == 0 or haystack[target - 1:target] == b"\n":
        return target
    best = None
    prev = haystack.rfind(b"\n", max(0, target - window), target)
    if prev >= 0:
        best = prev + 1
    nxt = haystack.find(b"\n", target, min(size, target + window))
    if nxt >= 0 and (best is None or nxt + 1 - target < target - best):
        best = nxt + 1
    return best if best is not None else _char_boundary(haystack, target)


# ---------------------------------------------------------------------------- prompt assembly
MIN_HAYSTACK_BYTES = 64
SPLITS = ("train", "eval")


def make_source(haystack_dir: str | None, haystack_suffixes, synthetic_filler: bool, split: str) -> HaystackSource:
    """Check the haystack options shared by the long-context tasks and build the source."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not isinstance(synthetic_filler, bool):
        raise ValueError(f"synthetic_filler must be True or False, got {synthetic_filler!r}")
    if synthetic_filler and split != "train":
        raise ValueError("synthetic_filler=True is for training only: pass split='train', or use real text for eval")
    if synthetic_filler and haystack_dir is not None:
        raise ValueError("pass either synthetic_filler=True or haystack_dir, not both")
    return HaystackSource(haystack_dir, haystack_suffixes, synthetic_filler)


def build_context(
    source: HaystackSource, rng: random.Random, length: int, inserts: list[tuple[float, str]], question: str
) -> tuple[str, list[dict], dict]:
    """A prompt of exactly `length` model tokens: haystack with inserts at depths, then the question.

    inserts: [(depth, text)]; each text is put on its own line (a newline is appended).
    Returns (prompt, spans, haystack_meta); spans as in insert_at_depths plus "char_span".
    """
    from .schema import PROMPT_SPECIALS

    texts = [(d, (t + "\n").encode()) for d, t in inserts]
    tail = ("\n" + question).encode()
    hay_bytes = length - PROMPT_SPECIALS - len(tail) - sum(len(t) for _, t in texts)
    if hay_bytes < MIN_HAYSTACK_BYTES:
        need = length - hay_bytes + MIN_HAYSTACK_BYTES
        raise ValueError(f"length={length} tokens is too small for the needles and question: need at least {need}")
    haystack, pieces = source.take(hay_bytes, rng)
    context, spans = insert_at_depths(haystack, texts)
    ascii_only = context.isascii()  # then char offsets equal byte offsets; skips decoding 1 MB per needle
    for s in spans:
        s["char_span"] = list(s["byte_span"]) if ascii_only else [char_offset(context, b) for b in s["byte_span"]]
    prompt = (context + tail).decode("utf-8")
    meta = {
        "source": source.kind,
        "root": None if source.synthetic else source.directory,
        "bytes": hay_bytes,
        "snap_window": snap_window(hay_bytes),
        "pieces": pieces,
    }
    return prompt, spans, meta


def parse_depth(depth, count: int) -> list[float | None]:
    """depth option -> one requested depth per insert (None = seeded random).

    None: all random; a number: the first insert at that depth, the rest random;
    a sequence: one depth per insert.
    """
    from .schema import check_unit

    if depth is None:
        return [None] * count
    if isinstance(depth, (list, tuple)):
        if len(depth) != count:
            raise ValueError(f"depth has {len(depth)} values but there are {count} needles; give one per needle")
        return [check_unit(f"depth[{i}]", d) for i, d in enumerate(depth)]
    return [check_unit("depth", depth)] + [None] * (count - 1)
