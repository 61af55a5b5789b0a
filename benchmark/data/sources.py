"""Named dataset sources: where their raw files come from and how each official layout is read.

Every source yields one interaction table in file order with the columns
``user, item, timestamp, feedback, label`` (raw ids, integer timestamps, the raw feedback value
and the binary label of protocol.md §3.2).

Raw files are resolved in this order (architecture.md §8):
  1. an explicit folder (``--data-dir`` or the ``DNR_BENCH_DATA`` environment variable);
  2. the local cache (``<cache>/raw/<dataset>/``; ``--cache-dir`` or ``DNR_BENCH_CACHE``);
  3. a copy bundled with an installed package (MovieLens-100K inside RecBole);
  4. the official download, verified against its published checksum (pooch), where online.
When none works, :class:`DataUnavailableError` names the file to place and where.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import lzma
import os
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.errors import ConfigError, DataFormatError, DataUnavailableError, UserInputError

DATA_DIR_ENV = "DNR_BENCH_DATA"
CACHE_DIR_ENV = "DNR_BENCH_CACHE"
COMPRESSED_SUFFIXES = ("", ".xz", ".gz", ".bz2", ".zst")

KUAIRAND_SIGNALS = ("is_click", "long_view", "is_like", "is_follow", "is_comment", "is_forward")
"""Binary KuaiRand-Pure feedback columns a label rule may name."""


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dnr-bench"


@dataclasses.dataclass(frozen=True)
class Layout:
    """One on-disk format of a dataset's interaction log."""

    name: str
    description: str
    patterns: tuple[str, ...]
    """Glob patterns (relative to a searched folder); every match is read, in name order."""
    read: Callable[[Path], pd.DataFrame]
    """Reads one file into ``user, item, timestamp`` plus ``rating`` or signal columns."""
    k_core: int
    """Default k-core for this layout (the paper's 20, or 10 for the shared subsets)."""
    implicit: bool = False
    """Every row is a positive event; there is no rating to threshold."""


@dataclasses.dataclass(frozen=True)
class Download:
    url: str
    known_hash: str | None
    """``md5:…``/``sha256:…`` as published by the provider; None where none is published."""
    filename: str
    unpack: str | None = None
    """``zip`` or ``tar`` to extract after the verified download."""


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    name: str
    title: str
    layouts: tuple[Layout, ...]
    default_label: str
    label_choices: tuple[str, ...]
    place_hint: str
    """What a user must put where when nothing is found."""
    aliases: tuple[str, ...] = ()
    subdirs: tuple[str, ...] = ()
    """Folder names under a data directory that may hold this dataset."""
    download: Download | None = None
    bundled: Callable[[], Path | None] | None = None
    note: str = ""
    """Provenance caveat that every report must carry (substitutions, implicit feedback)."""


@dataclasses.dataclass(frozen=True)
class ResolvedFiles:
    source: DatasetSource
    layout: Layout
    paths: tuple[Path, ...]
    origin: str
    """``data-dir``, ``cache``, ``bundled`` or ``download``."""


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Strict readers: a malformed row is an error naming the file and line, never a partial load.
# --------------------------------------------------------------------------------------------

def _open_text(path: Path):
    """A binary handle on the (possibly compressed or zipped) file; zip holds one wanted member."""
    if path.suffix == ".zip":
        archive = zipfile.ZipFile(path)
        wanted = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] in ("ratings.dat", "u.data")]
        if not wanted:
            raise DataFormatError(path, "zip archive holds no ratings.dat")
        return archive.open(wanted[0])
    return path


def _read_table(path: Path, *, sep: str, names: list[str], header: bool, dtype=str) -> pd.DataFrame:
    """pandas C parser with the file's own errors turned into DataFormatError. A sentinel
    column catches rows with one field too many (more than one makes the parser fail), which
    pandas would otherwise fold silently into an index."""
    try:
        with warnings.catch_warnings():
            # pandas only warns (and drops fields) when the first row is the long one
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(
                _open_text(path), sep=sep, header=None, names=[*names, "_extra"], index_col=False,
                skiprows=1 if header else 0, dtype=dtype, engine="c",
                compression="infer" if path.suffix != ".zip" else None,
                keep_default_na=False, na_values=[""],
            )
    except pd.errors.ParserWarning as exc:
        raise DataFormatError(path, f"row has more than the {len(names)} expected fields",
                              _first_long_line(path, sep, len(names) + 1)) from exc
    except pd.errors.ParserError as exc:
        match = re.search(r"line (\d+)", str(exc))
        line = int(match.group(1)) + (1 if header else 0) if match else None
        raise DataFormatError(path, f"malformed row ({exc})", line) from exc
    except pd.errors.EmptyDataError as exc:
        raise DataFormatError(path, "file is empty") from exc
    except (lzma.LZMAError, EOFError, OSError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise DataFormatError(path, f"cannot be read: {exc}") from exc
    if frame.empty:
        raise DataFormatError(path, "file holds no rows")
    extra = frame["_extra"].notna().to_numpy()
    if extra.any():
        line = int(np.flatnonzero(extra)[0]) + (2 if header else 1)
        raise DataFormatError(path, f"row has more than the {len(names)} expected fields", line)
    return frame.drop(columns="_extra")


def _first_long_line(path: Path, sep: str, limit: int) -> int | None:
    """1-based number of the first line with more than ``limit`` fields (error path only)."""
    for number, line in enumerate(_text_lines(path), 1):
        if line.rstrip("\n").count(sep) + 1 > limit:
            return number
    return None


def _require(frame: pd.DataFrame, path: Path, *, integer: list[str], numeric: list[str] = (),
             present: list[str] = (), empty: list[str] = (), first_line: int = 1) -> pd.DataFrame:
    """Check column types row by row; report the first offending line (1-based, as in an editor)."""

    def fail(mask: np.ndarray, what: str):
        row = int(np.flatnonzero(mask)[0])
        raise DataFormatError(path, what, line=row + first_line)

    for col in integer:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna().to_numpy() | (values.to_numpy() != np.floor(values.to_numpy()))
        if bad.any():
            fail(bad, f"column {col!r} must be an integer")
        frame[col] = values.astype(np.int64)
    for col in numeric:
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna().to_numpy()
        if bad.any():
            fail(bad, f"column {col!r} must be a number")
        frame[col] = values.astype(np.float64)
    for col in present:
        bad = frame[col].isna().to_numpy()
        if bad.any():
            fail(bad, f"column {col!r} is missing")
    for col in empty:
        bad = frame[col].notna().to_numpy()
        if bad.any():
            fail(bad, "unexpected field: not in the UserID::MovieID::Rating::Timestamp layout")
    return frame


def read_movielens_dat(path: Path) -> pd.DataFrame:
    """GroupLens ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp`` (ML-1M)."""
    # Splitting on ':' keeps the fast C parser; the '::' separators leave empty fields between.
    names = ["user", "_a", "item", "_b", "rating", "_c", "timestamp"]
    frame = _read_table(path, sep=":", names=names, header=False)
    frame = _require(frame, path, integer=["user", "item", "timestamp"], numeric=["rating"],
                     empty=["_a", "_b", "_c"])
    return frame[["user", "item", "timestamp", "rating"]]


def read_movielens_tab(path: Path) -> pd.DataFrame:
    """Tab-separated ``user item rating timestamp``: GroupLens ``u.data`` and RecBole's
    ``ml-100k.inter`` (the latter with a typed header line)."""
    header = _first_line(path).startswith("user_id")
    frame = _read_table(path, sep="\t", names=["user", "item", "rating", "timestamp"], header=header)
    frame = _require(frame, path, integer=["user", "item", "timestamp"], numeric=["rating"],
                     first_line=2 if header else 1)
    return frame[["user", "item", "timestamp", "rating"]]


def read_kuairand_log(path: Path) -> pd.DataFrame:
    """KuaiRand-Pure ``log_standard_*`` (header; ``user_id, video_id, time_ms`` and signals)."""
    expected = ["user_id", "video_id", "time_ms", *KUAIRAND_SIGNALS]
    header = _first_line(path).split(",")
    missing = [c for c in expected if c not in header]
    if missing:
        raise DataFormatError(path, f"not a KuaiRand standard log: header lacks {missing}", line=1)
    frame = _read_table(path, sep=",", names=header, header=True)
    frame = frame[expected].rename(columns={"user_id": "user", "video_id": "item", "time_ms": "timestamp"})
    return _require(frame, path, integer=["user", "item", "timestamp", *KUAIRAND_SIGNALS], first_line=2)


def read_amazon_2018(path: Path) -> pd.DataFrame:
    """Amazon Review Data 2018 ratings-only ``Books.csv``: no header, ``item,user,rating,timestamp``."""
    frame = _read_table(path, sep=",", names=["item", "user", "rating", "timestamp"], header=False)
    frame = _require(frame, path, integer=["timestamp"], numeric=["rating"], present=["item", "user"])
    return frame[["user", "item", "timestamp", "rating"]]


def read_amazon_2014(path: Path) -> pd.DataFrame:
    """Amazon 2014 ``ratings_Books.csv``: no header, ``user,item,rating,timestamp``."""
    frame = _read_table(path, sep=",", names=["user", "item", "rating", "timestamp"], header=False)
    frame = _require(frame, path, integer=["timestamp"], numeric=["rating"], present=["item", "user"])
    return frame[["user", "item", "timestamp", "rating"]]


def read_implicit_csv(path: Path) -> pd.DataFrame:
    """``user_id,item_id,timestamp`` with a header: implicit feedback, every row a positive event."""
    header = _first_line(path).strip().split(",")
    if header[:3] != ["user_id", "item_id", "timestamp"]:
        raise DataFormatError(path, f"expected header user_id,item_id,timestamp, got {','.join(header)}", line=1)
    frame = _read_table(path, sep=",", names=["user", "item", "timestamp"], header=True)
    return _require(frame, path, integer=["timestamp"], present=["user", "item"], first_line=2)


def _text_lines(path: Path):
    """The file's lines as text, through the same decompression / zip member as the reader."""
    import pandas.io.common as pio

    handle = _open_text(path)
    try:
        if isinstance(handle, Path):
            with pio.get_handle(handle, "r", compression="infer", encoding="utf-8", errors="replace") as h:
                yield from h.handle
        else:
            with handle:
                for raw in handle:
                    yield raw.decode("utf-8", errors="replace")
    except (lzma.LZMAError, EOFError, OSError) as exc:
        raise DataFormatError(path, f"cannot be read: {exc}") from exc


def _first_line(path: Path) -> str:
    lines = _text_lines(path)
    try:
        return next(lines, "")
    finally:
        lines.close()


def _variants(*names: str) -> tuple[str, ...]:
    return tuple(f"{n}{suffix}" for n in names for suffix in COMPRESSED_SUFFIXES)


def _recbole_ml100k() -> Path | None:
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "dataset_example" / "ml-100k" / "ml-100k.inter"
    return path if path.exists() else None


RATING_LABELS = ("rating>=3", "rating>=4", "rating>=5")

SOURCES: dict[str, DatasetSource] = {}


def _add(source: DatasetSource) -> None:
    SOURCES[source.name] = source


_add(DatasetSource(
    name="ml-100k",
    title="MovieLens-100K",
    aliases=("ml100k",),
    subdirs=("ml-100k",),
    layouts=(
        Layout("recbole-inter", "RecBole atomic file ml-100k.inter", _variants("ml-100k.inter"),
               read_movielens_tab, k_core=20),
        Layout("grouplens-udata", "GroupLens u.data", _variants("u.data"), read_movielens_tab, k_core=20),
    ),
    default_label="rating>=3",
    label_choices=RATING_LABELS,
    bundled=_recbole_ml100k,
    place_hint="ml-100k.inter (RecBole) or u.data (GroupLens ml-100k.zip) in DATA_DIR/ml-100k/",
    note="MovieLens-100K as bundled with RecBole: the embedded default, not a paper dataset.",
))

_add(DatasetSource(
    name="ml-1m",
    title="MovieLens-1M",
    aliases=("ml1m", "movielens-1m"),
    subdirs=("ml-1m",),
    layouts=(
        Layout("grouplens-dat", "GroupLens ratings.dat (UserID::MovieID::Rating::Timestamp)",
               _variants("ratings.dat"), read_movielens_dat, k_core=20),
        Layout("grouplens-zip", "GroupLens ml-1m.zip", ("ml-1m.zip",), read_movielens_dat, k_core=20),
    ),
    default_label="rating>=3",
    label_choices=RATING_LABELS,
    download=Download("https://files.grouplens.org/datasets/movielens/ml-1m.zip",
                      "md5:c4d9eecfca2ab87c1945afe126590906", "ml-1m.zip"),  # read in place
    place_hint="ratings.dat (or ml-1m.zip) from GroupLens' ml-1m.zip in DATA_DIR/ml-1m/",
))

_add(DatasetSource(
    name="kuairand",
    title="KuaiRand-Pure",
    aliases=("kuairand-pure", "kuaivideo", "kuai"),
    subdirs=("kuairand-pure", "KuaiRand-Pure", "KuaiRand-Pure/data", "kuairand"),
    layouts=(
        Layout("official-standard-logs", "official log_standard_4_08_to_4_21_pure.csv + "
               "log_standard_4_22_to_5_08_pure.csv", _variants("log_standard_*_pure.csv"),
               read_kuairand_log, k_core=20),
        Layout("standard-log-window", "a KuaiRand-Pure standard-log window with the official columns",
               _variants("kuairand_pure_log_standard_*.csv"), read_kuairand_log, k_core=10),
    ),
    default_label="is_click",
    label_choices=KUAIRAND_SIGNALS,
    download=Download("https://zenodo.org/records/10439422/files/KuaiRand-Pure.tar.gz",
                      "md5:0820331067a3784d9691136f772b35a7", "KuaiRand-Pure.tar.gz", unpack="tar"),
    place_hint="log_standard_4_08_to_4_21_pure.csv and log_standard_4_22_to_5_08_pure.csv "
               "(KuaiRand-Pure.tar.gz, Zenodo record 10439422) in DATA_DIR/kuairand-pure/",
    note="KuaiRand-Pure stands in for the paper's Kuaivideo, which matches no public release; "
         "its numbers are not comparable with the paper's Kuaivideo column.",
))

_add(DatasetSource(
    name="amazon-books",
    title="Amazon Books",
    aliases=("book", "books", "amazon"),
    subdirs=("amazon-books", "amazon"),
    layouts=(
        Layout("ni2018-ratings", "Amazon Review Data 2018 ratings-only Books.csv (item,user,rating,timestamp)",
               _variants("Books.csv"), read_amazon_2018, k_core=20),
        Layout("mcauley2014-ratings", "Amazon 2014 ratings_Books.csv (user,item,rating,timestamp)",
               _variants("ratings_Books.csv"), read_amazon_2014, k_core=20),
        Layout("implicit-sample", "implicit user_id,item_id,timestamp sample (every row positive)",
               _variants("interactions.csv"), read_implicit_csv, k_core=10, implicit=True),
    ),
    default_label="rating>=3",
    label_choices=RATING_LABELS,
    # The 2018 release publishes no checksum: a download is recorded by its sha256 (trust on first use).
    download=Download("https://mcauleylab.ucsd.edu/public_datasets/data/amazon_v2/categoryFilesSmall/Books.csv",
                      None, "Books.csv"),
    place_hint="Books.csv (Amazon Review Data 2018, ratings only) or ratings_Books.csv (2014) "
               "in DATA_DIR/amazon-books/",
))


def get_source(name: str) -> DatasetSource:
    key = name.strip().lower()
    for source in SOURCES.values():
        if key == source.name or key in source.aliases:
            return source
    import difflib

    known = sorted([*SOURCES, *(a for s in SOURCES.values() for a in s.aliases)])
    close = difflib.get_close_matches(key, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UserInputError(f"unknown dataset {name!r}{hint} (known: {', '.join(SOURCES)})")


# --------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------

def _find_in(folder: Path, source: DatasetSource) -> ResolvedFiles | None:
    if not folder.is_dir():
        return None
    folders = [folder, *(folder / sub for sub in source.subdirs)]
    for layout in source.layouts:
        for where in folders:
            if not where.is_dir():
                continue
            hits: dict[str, Path] = {}
            for pattern in layout.patterns:
                for path in sorted(where.glob(pattern)):
                    stem = re.sub(r"\.(xz|gz|bz2|zst)$", "", path.name)
                    hits.setdefault(stem, path)  # an uncompressed copy wins over its .xz twin
            if hits:
                return ResolvedFiles(source, layout, tuple(hits[k] for k in sorted(hits)), origin="")
    return None


def _download(source: DatasetSource, target: Path) -> ResolvedFiles:
    import pooch

    spec = source.download
    target.mkdir(parents=True, exist_ok=True)
    processor = {"zip": pooch.Unzip(), "tar": pooch.Untar(), None: None}[spec.unpack]
    pooch.retrieve(spec.url, known_hash=spec.known_hash, fname=spec.filename, path=target,
                   processor=processor, progressbar=True)
    found = _find_in(target, source) or next(
        (r for sub in sorted(target.iterdir()) if sub.is_dir() for r in [_find_in(sub, source)] if r), None)
    if found is None:
        raise DataFormatError(target / spec.filename, "download holds none of the expected files")
    return found


def resolve_files(dataset: str, data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
                  download: bool = True) -> ResolvedFiles:
    """Find the raw files of ``dataset``; see the module docstring for the order."""
    source = get_source(dataset)
    tried: list[str] = []
    explicit = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    if explicit:
        folder = Path(explicit).expanduser()
        if not folder.is_dir():
            raise DataUnavailableError(f"data directory {folder} does not exist")
        found = _find_in(folder, source)
        if found:
            return dataclasses.replace(found, origin="data-dir")
        tried.append(f"{folder} (and {', '.join(source.subdirs)} inside it)")
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    raw = cache / "raw" / source.name
    found = _find_in(raw, source)
    if found is None and raw.is_dir():
        found = next((r for sub in sorted(raw.iterdir()) if sub.is_dir() for r in [_find_in(sub, source)] if r), None)
    if found:
        return dataclasses.replace(found, origin="cache")
    tried.append(str(raw))
    if source.bundled is not None:
        path = source.bundled()
        if path is not None:
            return ResolvedFiles(source, source.layouts[0], (path,), origin="bundled")
        tried.append("the copy bundled with RecBole (recbole is not installed)")
    if source.download is not None:
        if download:
            try:
                return dataclasses.replace(_download(source, raw), origin="download")
            except DataFormatError:
                raise
            except Exception as exc:  # network, checksum mismatch: pooch leaves no partial file
                tried.append(f"download {source.download.url} failed: {type(exc).__name__}: {exc}")
        else:
            tried.append("download disabled")
    hint = source.place_hint.replace("DATA_DIR", str(Path(explicit).expanduser()) if explicit else "DATA_DIR")
    raise DataUnavailableError(
        f"{source.title} ({source.name}) not found. Place {hint}, then pass --data-dir DATA_DIR "
        f"(or set {DATA_DIR_ENV}=DATA_DIR). Tried: " + "; ".join(tried) + "."
    )


# --------------------------------------------------------------------------------------------
# Loading and labels
# --------------------------------------------------------------------------------------------

def load_interactions(files: ResolvedFiles, label_rule: str | None = None) -> tuple[pd.DataFrame, str]:
    """Read every file of ``files`` in order and attach ``feedback`` and the binary ``label``.

    Returns the table and the label rule used."""
    source, layout = files.source, files.layout
    rule = label_rule or ("implicit" if layout.implicit else source.default_label)
    frames = [layout.read(path) for path in files.paths]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if layout.implicit:
        if rule != "implicit":
            raise ConfigError(f"data.label = {rule!r}: {files.paths[0].name} is implicit feedback "
                              "(no ratings); the only label rule is 'implicit'")
        frame["feedback"] = 1.0
        frame["label"] = np.ones(len(frame), dtype=np.int8)
    elif rule.startswith("rating>="):
        if "rating" not in frame:
            raise ConfigError(f"data.label = {rule!r}: {source.name} has no ratings")
        threshold = float(rule.split(">=", 1)[1])
        frame["feedback"] = frame["rating"]
        frame["label"] = (frame["rating"] >= threshold).astype(np.int8)
    elif rule in frame.columns and rule in source.label_choices:
        frame["feedback"] = frame[rule].astype(np.float64)
        frame["label"] = (frame[rule] > 0).astype(np.int8)
    else:
        raise ConfigError(f"data.label = {rule!r} is not valid for {source.name}; "
                          f"choose one of {', '.join(source.label_choices)}")
    return frame[["user", "item", "timestamp", "feedback", "label"]], rule
