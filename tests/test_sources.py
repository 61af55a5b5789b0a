"""Loaders for every official layout, resolution order and the bad-input paths."""
from __future__ import annotations

import http.server
import hashlib
import lzma
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from benchmark.data import sources
from conftest import shared_file
from benchmark.data.sources import load_interactions, resolve_files
from benchmark.errors import ConfigError, DataFormatError, DataUnavailableError, UserInputError

ML1M_ROWS = "1::1193::5::978300760\n1::661::3::978302109\n2::1193::2::978298413\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".xz":
        path.write_bytes(lzma.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def load(dataset: str, folder: Path, label: str | None = None):
    files = resolve_files(dataset, folder, folder / "no-cache", download=False)
    return files, *load_interactions(files, label)


@pytest.mark.parametrize("name", ["ratings.dat", "ratings.dat.xz"])
def test_ml1m_dat_plain_and_compressed(tmp_path, name):
    write(tmp_path / "ml-1m" / name, ML1M_ROWS)
    files, frame, rule = load("ml-1m", tmp_path)
    assert files.layout.name == "grouplens-dat" and files.origin == "data-dir"
    assert frame["user"].tolist() == [1, 1, 2]
    assert frame["item"].tolist() == [1193, 661, 1193]
    assert frame["timestamp"].tolist() == [978300760, 978302109, 978298413]
    assert frame["feedback"].tolist() == [5.0, 3.0, 2.0]
    assert rule == "rating>=3" and frame["label"].tolist() == [1, 1, 0]


def test_ml1m_zip_and_label_rule(tmp_path):
    with zipfile.ZipFile(tmp_path / "ml-1m.zip", "w") as zf:
        zf.writestr("ml-1m/ratings.dat", ML1M_ROWS)
        zf.writestr("ml-1m/movies.dat", "1::Toy Story (1995)::Animation\n")
    files, frame, rule = load("ml-1m", tmp_path, label="rating>=4")
    assert files.layout.name == "grouplens-zip"
    assert rule == "rating>=4" and frame["label"].tolist() == [1, 0, 0]


def test_ml100k_inter_and_udata(tmp_path):
    write(tmp_path / "ml-100k.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                      "196\t242\t3\t881250949\n186\t302\t2\t891717742\n")
    _, frame, _ = load("ml-100k", tmp_path)
    assert frame["item"].tolist() == [242, 302] and frame["label"].tolist() == [1, 0]
    write(tmp_path / "b" / "u.data", "196\t242\t3\t881250949\n")
    files, frame, _ = load("ml-100k", tmp_path / "b")
    assert files.layout.name == "grouplens-udata" and len(frame) == 1


def test_ml100k_bundled_with_recbole(tmp_path):
    files = resolve_files("ml-100k", None, tmp_path, download=False)
    assert files.origin == "bundled" and files.paths[0].name == "ml-100k.inter"
    frame, _ = load_interactions(files)
    assert len(frame) == 100_000 and frame["user"].nunique() == 943


KUAI_HEADER = ("user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,"
               "is_hate,long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,"
               "is_profile_enter,is_rand,tab\n")


def kuai_row(user, video, ms, click, long_view=0):
    return f"{user},{video},20220425,0,{ms},{click},0,0,0,0,0,{long_view},100,200,0,0,0,0,1\n"


def test_kuairand_official_two_logs_in_order(tmp_path):
    folder = tmp_path / "KuaiRand-Pure" / "data"
    write(folder / "log_standard_4_22_to_5_08_pure.csv", KUAI_HEADER + kuai_row(1, 20, 2000, 0, 1))
    write(folder / "log_standard_4_08_to_4_21_pure.csv", KUAI_HEADER + kuai_row(1, 10, 1000, 1))
    write(folder / "log_random_4_22_to_5_08_pure.csv", KUAI_HEADER + kuai_row(9, 99, 5, 1))
    files, frame, rule = load("kuairand", tmp_path)
    assert files.layout.name == "official-standard-logs" and files.layout.k_core == 20
    assert [p.name for p in files.paths] == ["log_standard_4_08_to_4_21_pure.csv", "log_standard_4_22_to_5_08_pure.csv"]
    assert frame["item"].tolist() == [10, 20]  # the random-exposure log is not read
    assert rule == "is_click" and frame["label"].tolist() == [1, 0]
    _, frame, rule = load("kuairand", tmp_path, label="long_view")
    assert frame["label"].tolist() == [0, 1]


def test_kuairand_window_file(tmp_path):
    write(tmp_path / "kuairand_pure_log_standard_20220425_20220508.csv.xz", KUAI_HEADER + kuai_row(3, 4, 5, 1))
    files, frame, _ = load("kuaivideo", tmp_path)  # alias
    assert files.layout.name == "standard-log-window" and files.layout.k_core == 10
    assert frame["timestamp"].tolist() == [5]


def test_amazon_layouts(tmp_path):
    write(tmp_path / "a" / "Books.csv", "0001713353,A1C6M8LCIX4M6M,5.0,1123804800\n0001713353,A1REUF3A1YCPHM,2.0,1112140800\n")
    files, frame, _ = load("book", tmp_path / "a")
    assert files.layout.name == "ni2018-ratings"
    assert frame["user"].astype(str).tolist() == ["A1C6M8LCIX4M6M", "A1REUF3A1YCPHM"]
    assert frame["item"].astype(str).tolist() == ["0001713353"] * 2 and frame["label"].tolist() == [1, 0]
    write(tmp_path / "b" / "ratings_Books.csv", "AH2L9G3DQHHAJ,0000000116,4.0,1019865600\n")
    files, frame, _ = load("amazon-books", tmp_path / "b")
    assert files.layout.name == "mcauley2014-ratings"
    assert frame["user"].astype(str).tolist() == ["AH2L9G3DQHHAJ"] and frame["feedback"].tolist() == [4.0]
    write(tmp_path / "c" / "amazon-books" / "interactions.csv", "user_id,item_id,timestamp\n0,5,100\n0,6,100\n")
    files, frame, rule = load("amazon-books", tmp_path / "c")
    assert files.layout.implicit and rule == "implicit" and frame["label"].tolist() == [1, 1]
    with pytest.raises(ConfigError, match="implicit"):
        load("amazon-books", tmp_path / "c", label="rating>=3")


@pytest.mark.parametrize("text, line, what", [
    (ML1M_ROWS + "3::12::x::978300760\n", 4, "rating"),
    (ML1M_ROWS + "3::12::4\n", 4, "timestamp"),
    ("1::1193::5::978300760::7\n", 1, "more than the 7 expected fields"),
    ("1::1193::5::978300760\n1::1193::5::978300760::7::8\n", 2, "malformed row"),
    ("1,1193,5,978300760\n", 1, "integer"),
])
def test_malformed_ml1m_names_file_and_line(tmp_path, text, line, what):
    path = write(tmp_path / "ratings.dat", text)
    with pytest.raises(DataFormatError, match=what) as err:
        load("ml-1m", tmp_path)
    assert err.value.line == line and str(path) in str(err.value) and f"line {line}" in str(err.value)


def test_malformed_kuairand_and_amazon(tmp_path):
    write(tmp_path / "k" / "kuairand_pure_log_standard_x.csv", "user_id,video_id\n1,2\n")
    with pytest.raises(DataFormatError, match="header lacks"):
        load("kuairand", tmp_path / "k")
    write(tmp_path / "a" / "interactions.csv", "user_id,item_id,timestamp\n0,5,100\n0,6,yesterday\n")
    with pytest.raises(DataFormatError, match="line 3"):
        load("amazon-books", tmp_path / "a")
    write(tmp_path / "b" / "Books.csv", "0001713353,A1C6M8LCIX4M6M,5.0,1123804800,extra,fields\n")
    with pytest.raises(DataFormatError, match="line 1"):
        load("amazon-books", tmp_path / "b")


def test_truncated_compressed_file(tmp_path):
    blob = lzma.compress((ML1M_ROWS * 2000).encode())
    (tmp_path / "ratings.dat.xz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataFormatError, match="ratings.dat.xz"):
        load("ml-1m", tmp_path)


def test_empty_file(tmp_path):
    write(tmp_path / "ratings.dat", "")
    with pytest.raises(DataFormatError, match="empty|no rows"):
        load("ml-1m", tmp_path)


def test_unknown_dataset_suggests():
    with pytest.raises(UserInputError, match="did you mean ml-1m"):
        sources.get_source("ml-1n")


def test_invalid_label_rule(tmp_path):
    write(tmp_path / "ratings.dat", ML1M_ROWS)
    with pytest.raises(ConfigError, match="is_click.*not valid|not valid"):
        load("ml-1m", tmp_path, label="is_click")


def test_missing_data_names_the_file_to_place(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataUnavailableError) as err:
        resolve_files("ml-1m", tmp_path / "empty", tmp_path / "cache", download=False)
    message = str(err.value)
    assert "ratings.dat" in message and str(tmp_path / "empty" / "ml-1m") in message
    assert "--data-dir" in message and err.value.exit_code == 2
    assert not (tmp_path / "cache").exists()  # nothing half-written


def test_missing_data_dir_is_an_error(tmp_path):
    with pytest.raises(DataUnavailableError, match="does not exist"):
        resolve_files("ml-1m", tmp_path / "nope", tmp_path / "cache", download=False)


def test_env_var_and_cache_order(tmp_path, monkeypatch):
    write(tmp_path / "env" / "ratings.dat", ML1M_ROWS)
    write(tmp_path / "cache" / "raw" / "ml-1m" / "ratings.dat", ML1M_ROWS)
    monkeypatch.setenv("DNR_BENCH_DATA", str(tmp_path / "env"))
    assert resolve_files("ml-1m", None, tmp_path / "cache", download=False).origin == "data-dir"
    monkeypatch.delenv("DNR_BENCH_DATA")
    assert resolve_files("ml-1m", None, tmp_path / "cache", download=False).origin == "cache"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_folder(tmp_path):
    """A loopback HTTP server over a temporary folder (the 'official' host in these tests)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = lambda *a, **kw: _Quiet(*a, directory=str(root), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _with_download(monkeypatch, url: str, known_hash: str):
    source = sources.SOURCES["ml-1m"]
    patched = sources.DatasetSource(**{**source.__dict__,
                                       "download": sources.Download(url, known_hash, "ml-1m.zip")})
    monkeypatch.setitem(sources.SOURCES, "ml-1m", patched)


def test_download_verified_by_checksum(tmp_path, http_folder, monkeypatch):
    root, base = http_folder
    with zipfile.ZipFile(root / "ml-1m.zip", "w") as zf:
        zf.writestr("ml-1m/ratings.dat", ML1M_ROWS)
    md5 = hashlib.md5((root / "ml-1m.zip").read_bytes()).hexdigest()
    _with_download(monkeypatch, f"{base}/ml-1m.zip", f"md5:{md5}")
    files = resolve_files("ml-1m", None, tmp_path / "cache", download=True)
    assert files.origin == "download" and files.paths[0].name == "ml-1m.zip"  # read in place
    frame, _ = load_interactions(files)
    assert len(frame) == 3
    # second time it comes from the cache, with no server needed
    assert resolve_files("ml-1m", None, tmp_path / "cache", download=False).origin == "cache"


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, http_folder, monkeypatch):
    root, base = http_folder
    with zipfile.ZipFile(root / "ml-1m.zip", "w") as zf:
        zf.writestr("ml-1m/ratings.dat", ML1M_ROWS)
    _with_download(monkeypatch, f"{base}/ml-1m.zip", "md5:" + "0" * 32)
    with pytest.raises(DataUnavailableError, match="download .* failed"):
        resolve_files("ml-1m", None, tmp_path / "cache", download=True)
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert leftovers == []


def test_ml1m_real_file_paper_counts(tmp_path):
    """The paper's ML-1M after the 20-core filter: 6,022 users, 3,043 items, 995,154 actions."""
    from benchmark.data import protocol

    shared_file("ml-1m", "ratings.dat.xz")
    files = resolve_files("ml-1m", shared_file(), tmp_path, download=False)
    frame, _ = load_interactions(files)
    frame = protocol.deduplicate(frame)
    frame = frame[protocol.k_core(frame["user"].to_numpy(), frame["item"].to_numpy(), 20)]
    assert (frame["user"].nunique(), frame["item"].nunique(), len(frame)) == (6022, 3043, 995154)
    assert abs(frame["label"].mean() - 0.837) < 0.001  # rating >= 3 (protocol.md §2.2)
    assert np.isin(frame["user"].unique(), np.arange(1, 6041)).all()


def test_kuairand_tarball_download_is_found_after_extraction(tmp_path, http_folder, monkeypatch):
    import tarfile

    root, base = http_folder
    staging = tmp_path / "staging" / "KuaiRand-Pure" / "data"
    write(staging / "log_standard_4_08_to_4_21_pure.csv", KUAI_HEADER + kuai_row(1, 10, 1000, 1))
    write(staging / "log_standard_4_22_to_5_08_pure.csv", KUAI_HEADER + kuai_row(1, 20, 2000, 0))
    with tarfile.open(root / "KuaiRand-Pure.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "staging" / "KuaiRand-Pure", arcname="KuaiRand-Pure")
    md5 = hashlib.md5((root / "KuaiRand-Pure.tar.gz").read_bytes()).hexdigest()
    source = sources.SOURCES["kuairand"]
    patched = sources.DatasetSource(**{**source.__dict__, "download": sources.Download(
        f"{base}/KuaiRand-Pure.tar.gz", f"md5:{md5}", "KuaiRand-Pure.tar.gz", unpack="tar")})
    monkeypatch.setitem(sources.SOURCES, "kuairand", patched)
    files = resolve_files("kuairand", None, tmp_path / "cache", download=True)
    assert files.origin == "download" and files.layout.name == "official-standard-logs"
    assert len(files.paths) == 2
    assert resolve_files("kuairand", None, tmp_path / "cache", download=False).origin == "cache"
