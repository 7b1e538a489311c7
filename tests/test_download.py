"""sat_helpers.download against a local http.server: resume, Range, retries, checksums, safe
extraction, and the dataset functions end to end with tiny fake archives (no internet)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import socketserver
import stat
import tarfile
import threading
import time
import uuid
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sat_helpers import download
from sat_helpers.download import (
    ChecksumError,
    DatasetFiles,
    DownloadError,
    ManualDownloadRequired,
    UnsafeArchiveError,
    download_coco2014,
    download_flickr8k,
    download_flickr30k,
    download_karpathy_splits,
    download_url,
    extract,
)

BODY = random.Random(0).randbytes(5000)
DEAD = "http://127.0.0.1:9"  # nothing listens there: connection refused at once


class _Handler(BaseHTTPRequestHandler):
    """Serves server.files[path]: Range support, and the faults each entry asks for."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.server.log.append((self.path, self.headers.get("Range")))
        entry = self.server.files.get(self.path)
        if entry is None:
            self.send_error(404)
            return
        if entry["fail"] > 0:
            entry["fail"] -= 1
            self.send_error(503)
            return
        body = entry["body"]
        if entry["cut_after"] is not None:  # send the headers and part of the body, then stop
            cut, entry["cut_after"] = entry["cut_after"], None
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:cut])
            self.wfile.flush()
            time.sleep(entry["stall"])
            return
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and entry["range"]:
            self._send_range(body, int(match.group(1)))
        else:
            self._send(200, body)

    def _send_range(self, body: bytes, start: int) -> None:
        if start >= len(body):
            self._send(416, b"", {"Content-Range": f"bytes */{len(body)}"})
        else:
            self._send(206, body[start:], {"Content-Range": f"bytes {start}-{len(body) - 1}/"
                                                            f"{len(body)}"})

    def _send(self, code: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(code)
        for key, value in {**(headers or {}), "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)


class _QuietServer(ThreadingHTTPServer):
    """No reverse DNS look-up at bind time, no tracebacks when a client hangs up early."""

    daemon_threads = True

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address) -> None:
        pass


class LocalServer:
    """One test's view of the shared server: its files live under a path prefix of their own."""

    def __init__(self, httpd: _QuietServer) -> None:
        self.httpd = httpd
        self.prefix = f"/{uuid.uuid4().hex}"
        self.base = f"http://127.0.0.1:{httpd.server_address[1]}{self.prefix}"

    def add(self, path: str, body: bytes, range_ok: bool = True, fail: int = 0,
            cut_after: int | None = None, stall: float = 0.0) -> str:
        self.httpd.files[self.prefix + path] = {"body": body, "range": range_ok, "fail": fail,
                                                "cut_after": cut_after, "stall": stall}
        return self.base + path

    def ranges(self, path: str) -> list[str | None]:
        """The Range header of every request for ``path`` (None: no Range header)."""
        return [rng for p, rng in self.httpd.log if p == self.prefix + path]

    def requests(self) -> int:
        """How many requests this test has made."""
        return sum(p.startswith(self.prefix) for p, _ in self.httpd.log)


@pytest.fixture(scope="module")
def httpd():
    """A threading HTTP server on 127.0.0.1 (port 0: any free one), shared by this file."""
    httpd = _QuietServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.log = {}, []
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def server(httpd):
    return LocalServer(httpd)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No proxy, one quick retry, and every real URL pointed at a dead local port."""
    for name in [n for n in os.environ if n.lower().endswith("_proxy")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(download, "RETRIES", 1)
    monkeypatch.setattr(download, "RETRY_BACKOFF", 0.001)
    monkeypatch.setattr(download, "TIMEOUT", 5.0)
    for name in ("FLICKR8K_BASE_URL", "COCO_BASE_URL", "KARPATHY_GITHUB_BASE"):
        monkeypatch.setattr(download, name, DEAD)
    monkeypatch.setattr(download, "KARPATHY_ZIP_URL", DEAD + "/caption_datasets.zip")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


# ---------------------------------------------------------------- download_url


def test_download_verifies_renames_and_is_then_a_noop(server, tmp_path):
    url = server.add("/f.bin", BODY)
    dest = tmp_path / "sub" / "f.bin"
    assert download_url(url, dest, sha256=sha256(BODY), md5=md5(BODY), size=len(BODY)) == dest
    assert dest.read_bytes() == BODY
    assert not dest.with_name("f.bin.part").exists()
    download_url(url, dest, sha256=sha256(BODY))
    assert server.ranges("/f.bin") == [None]  # the second call made no request


def test_resume_after_a_cut_fetches_only_the_rest(server, tmp_path):
    url = server.add("/cut.bin", BODY, cut_after=1000)
    dest = download_url(url, tmp_path / "cut.bin", sha256=sha256(BODY), chunk_size=256)
    assert dest.read_bytes() == BODY
    assert server.ranges("/cut.bin") == [None, "bytes=1000-"]


def test_a_stalled_connection_times_out_and_resumes(server, tmp_path):
    url = server.add("/stall.bin", BODY, cut_after=3000, stall=3.0)
    dest = download_url(url, tmp_path / "stall.bin", sha256=sha256(BODY), timeout=1.0, retries=3)
    assert dest.read_bytes() == BODY
    assert server.ranges("/stall.bin")[:2] == [None, "bytes=3000-"]


def test_resumes_a_part_file_left_by_an_earlier_run(server, tmp_path):
    url = server.add("/p.bin", BODY)
    (tmp_path / "p.bin.part").write_bytes(BODY[:700])
    assert download_url(url, tmp_path / "p.bin", sha256=sha256(BODY)).read_bytes() == BODY
    assert server.ranges("/p.bin") == ["bytes=700-"]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    url = server.add("/norange.bin", BODY, range_ok=False)
    (tmp_path / "n.bin.part").write_bytes(b"x" * 700)  # would corrupt the file if appended to
    assert download_url(url, tmp_path / "n.bin").read_bytes() == BODY
    assert server.ranges("/norange.bin") == ["bytes=700-"]


def test_complete_part_file_answered_416_is_finished(server, tmp_path):
    url = server.add("/full.bin", BODY)
    (tmp_path / "full.bin.part").write_bytes(BODY)
    assert download_url(url, tmp_path / "full.bin", md5=md5(BODY)).read_bytes() == BODY
    assert server.ranges("/full.bin") == [f"bytes={len(BODY)}-"]


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_checksum_mismatch_names_both_hashes_and_keeps_nothing(server, tmp_path, algorithm):
    url = server.add("/wrong.bin", b"not the expected content")
    expected = hashlib.new(algorithm, BODY).hexdigest()
    actual = hashlib.new(algorithm, b"not the expected content").hexdigest()
    dest = tmp_path / "wrong.bin"
    with pytest.raises(ChecksumError) as err:
        download_url(url, dest, **{algorithm: expected})
    assert expected in str(err.value) and actual in str(err.value)
    assert "wrong.bin.part" in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_existing_file_with_wrong_checksum_is_downloaded_again(server, tmp_path):
    url = server.add("/again.bin", BODY)
    dest = tmp_path / "again.bin"
    dest.write_bytes(b"stale")
    assert download_url(url, dest, sha256=sha256(BODY)).read_bytes() == BODY


def test_retries_server_errors_then_succeeds(server, tmp_path):
    url = server.add("/flaky.bin", BODY, fail=2)
    assert download_url(url, tmp_path / "flaky.bin", retries=3).read_bytes() == BODY
    assert len(server.ranges("/flaky.bin")) == 3


def test_gives_up_after_its_retries(server, tmp_path):
    url = server.add("/down.bin", BODY, fail=100)
    with pytest.raises(DownloadError, match="after 3 tries"):
        download_url(url, tmp_path / "down.bin", retries=2)
    assert len(server.ranges("/down.bin")) == 3
    assert not (tmp_path / "down.bin").exists()


def test_not_found_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_url(server.base + "/missing.bin", tmp_path / "m.bin")
    assert len(server.ranges("/missing.bin")) == 1


def test_backoff_doubles_between_retries(server, tmp_path, monkeypatch):
    delays = []
    monkeypatch.setattr(download.time, "sleep", delays.append)
    url = server.add("/slow.bin", BODY, fail=3)
    download_url(url, tmp_path / "slow.bin", retries=3, backoff=0.5)
    assert delays == [0.5, 1.0, 2.0]


# ---------------------------------------------------------------- extract

EVIL_ABS = f"/tmp/sat-evil-{uuid.uuid4().hex}"  # ids= keep test names the same in every process


def _assert_refused(archive: Path, member: str, tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchiveError) as err:
        extract(archive, tmp_path / "out")
    assert repr(member) in str(err.value) and str(archive) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name]  # nothing left behind
    assert not Path(EVIL_ABS).exists()


@pytest.mark.parametrize("member", ["../evil", "ok/../../evil", EVIL_ABS, "..\\evil"],
                         ids=["parent", "nested-parent", "absolute", "backslash"])
def test_zip_slip_is_refused(tmp_path, member):
    archive = tmp_path / "slip.zip"
    archive.write_bytes(zip_bytes({"fine.txt": b"ok", member: b"pwned"}))
    _assert_refused(archive, member, tmp_path)


def test_zip_symlink_is_refused(tmp_path):
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine.txt", b"ok")
        zf.writestr(info, "../outside")
    _assert_refused(archive, "link", tmp_path)


@pytest.mark.parametrize("member", ["../evil", EVIL_ABS], ids=["parent", "absolute"])
def test_tar_slip_is_refused(tmp_path, member):
    archive = write_tar(tmp_path / "slip.tar.gz", {"fine.txt": b"ok", member: b"pwned"})
    _assert_refused(archive, member, tmp_path)


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_tar_links_are_refused(tmp_path, kind):
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as tf:
        link = tarfile.TarInfo("link")
        link.type, link.linkname = kind, "../outside"
        tf.addfile(link)
    _assert_refused(archive, "link", tmp_path)


@pytest.mark.parametrize("fmt", ["zip", "tar.gz"])
def test_extract_with_subdir_marks_completion_and_is_then_a_noop(tmp_path, fmt):
    members = {"top/a.jpg": b"a", "top/deep/b.jpg": b"b", "__MACOSX/top/._a.jpg": b"junk"}
    archive = tmp_path / f"arch.{fmt}"
    if fmt == "zip":
        archive.write_bytes(zip_bytes(members))
    else:
        write_tar(archive, members)
    dest = extract(archive, tmp_path / "out", subdir="top")
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*.jpg")) == ["a.jpg", "deep/b.jpg"]
    assert (dest / download.EXTRACTED_MARKER).is_file()
    assert not (dest / "__MACOSX").exists()
    archive.unlink()
    assert extract(archive, dest, subdir="top") == dest  # complete: the archive is not needed


def test_interrupted_extraction_leaves_nothing_trusted(tmp_path, monkeypatch):
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_bytes({"a.txt": b"a", "b.txt": b"b"}))

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(download.shutil, "copyfileobj", interrupt)
    with pytest.raises(KeyboardInterrupt):
        extract(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]
    monkeypatch.undo()
    (tmp_path / ".out.partial-stale").mkdir()  # as a killed process would leave it
    assert (extract(archive, tmp_path / "out") / "b.txt").read_bytes() == b"b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "out"]


def test_extract_refuses_corrupt_archives_and_unmarked_folders(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK but not really a zip")
    with pytest.raises(ValueError, match="bad.zip is not a zip or tar"):
        extract(bad, tmp_path / "out")
    (tmp_path / "mine").mkdir()
    good = tmp_path / "good.zip"
    good.write_bytes(zip_bytes({"a.txt": b"a"}))
    with pytest.raises(FileExistsError, match="mine exists but was not completed"):
        extract(good, tmp_path / "mine")


# ---------------------------------------------------------------- datasets

FAKE_KARPATHY = json.dumps({"images": [{"filename": "a.jpg", "split": "train",
                                        "sentences": [{"raw": "A dog.", "tokens": ["a", "dog"]}]}]})
TOKENS = "a.jpg#0\tA dog runs .\na.jpg#1\tA brown dog .\nb.jpg#0\tTwo cats sleep .\n"


def serve_flickr8k(server: LocalServer, monkeypatch) -> None:
    """Tiny Flickr8k zips on the local server, with their md5 sums pinned."""
    images = zip_bytes({"Flicker8k_Dataset/a.jpg": b"jpg-a", "Flicker8k_Dataset/b.jpg": b"jpg-b",
                        "__MACOSX/Flicker8k_Dataset/._a.jpg": b"junk"})
    text = zip_bytes({"Flickr8k.token.txt": TOKENS.encode(),
                      "Flickr_8k.trainImages.txt": b"a.jpg\n",
                      "Flickr_8k.devImages.txt": b"b.jpg\n", "Flickr_8k.testImages.txt": b""})
    server.add("/f8k/Flickr8k_Dataset.zip", images)
    server.add("/f8k/Flickr8k_text.zip", text)
    monkeypatch.setattr(download, "FLICKR8K_BASE_URL", server.base + "/f8k")
    monkeypatch.setattr(download, "FLICKR8K_MD5", {"Flickr8k_Dataset.zip": md5(images),
                                                   "Flickr8k_text.zip": md5(text)})


def serve_karpathy_file(server: LocalServer, monkeypatch, body: bytes, pinned: bytes) -> None:
    """The GitHub-style per-file mirror on the local server, pinned to ``pinned``'s hash."""
    server.add("/kp/dataset_flickr8k.json", body)
    monkeypatch.setattr(download, "KARPATHY_GITHUB_BASE", server.base + "/kp")
    monkeypatch.setitem(download.KARPATHY_FILES, "flickr8k",
                        ("dataset_flickr8k.json", sha256(pinned), len(pinned)))


def test_download_flickr8k_end_to_end_then_noop(server, tmp_path, monkeypatch):
    serve_flickr8k(server, monkeypatch)
    serve_karpathy_file(server, monkeypatch, FAKE_KARPATHY.encode(), FAKE_KARPATHY.encode())
    karpathy_json, image_dir = download_flickr8k(tmp_path)
    assert karpathy_json == tmp_path / "karpathy" / "dataset_flickr8k.json"
    assert karpathy_json.read_text() == FAKE_KARPATHY
    assert image_dir == tmp_path / "flickr8k" / "images"
    assert sorted(p.name for p in image_dir.glob("*.jpg")) == ["a.jpg", "b.jpg"]
    assert (image_dir / "b.jpg").read_bytes() == b"jpg-b"
    assert not list((tmp_path / "flickr8k").glob("*.zip"))  # archives removed once extracted
    requests = server.requests()
    assert download_flickr8k(tmp_path) == DatasetFiles(karpathy_json, image_dir)
    assert server.requests() == requests


def test_karpathy_falls_back_to_the_zip_mirror_on_a_checksum_mismatch(server, tmp_path,
                                                                      monkeypatch):
    serve_karpathy_file(server, monkeypatch, b'{"tampered": 1}', FAKE_KARPATHY.encode())
    caption_zip = zip_bytes({"data/dataset_flickr8k.json": FAKE_KARPATHY.encode(),
                             "data/dataset_coco.json": b"{}"})
    monkeypatch.setattr(download, "KARPATHY_ZIP_URL", server.add("/hf/cd.zip", caption_zip))
    path = download_karpathy_splits(tmp_path, "flickr8k")
    assert path.read_text() == FAKE_KARPATHY
    assert sorted(p.name for p in path.parent.iterdir()) == ["dataset_coco.json",
                                                              "dataset_flickr8k.json"]


def test_flickr8k_uses_the_official_splits_when_no_mirror_answers(server, tmp_path, monkeypatch):
    serve_flickr8k(server, monkeypatch)
    with pytest.warns(UserWarning, match="official Flickr8k splits"):
        karpathy_json, _ = download_flickr8k(tmp_path)
    images = json.loads(karpathy_json.read_text())["images"]
    assert [(i["filename"], i["split"], len(i["sentences"])) for i in images] == [
        ("a.jpg", "train", 2), ("b.jpg", "val", 1)]
    assert images[1]["sentences"][0]["tokens"] == ["two", "cats", "sleep"]
    assert not (tmp_path / "karpathy" / "dataset_flickr8k.json").exists()


def test_karpathy_error_says_what_to_get_and_where_then_finds_it(tmp_path):
    target = tmp_path / "karpathy" / "dataset_coco.json"
    with pytest.raises(ManualDownloadRequired) as err:
        download_karpathy_splits(tmp_path, "coco")
    message = str(err.value)
    assert str(target) in message and "caption_datasets.zip" in message
    assert download.KARPATHY_KAGGLE_PAGE in message and "cannot be fetched" in message
    target.write_text(FAKE_KARPATHY)  # put there by hand
    assert download_karpathy_splits(tmp_path, "coco") == target


def test_karpathy_zip_put_by_hand_is_unpacked(tmp_path):
    folder = tmp_path / "karpathy"
    folder.mkdir()
    (folder / "archive.zip").write_bytes(zip_bytes({"x/dataset_flickr30k.json": b"{}"}))
    assert download_karpathy_splits(tmp_path, "flickr30k") == folder / "dataset_flickr30k.json"


def test_flickr30k_error_says_what_to_get_and_where(tmp_path):
    with pytest.raises(ManualDownloadRequired) as err:
        download_flickr30k(tmp_path)
    message = str(err.value)
    assert download.FLICKR30K_FORM in message
    assert str(tmp_path / "flickr30k" / "flickr30k-images") in message


@pytest.mark.parametrize("by_hand", ["folder", "archive"])
def test_flickr30k_finds_files_put_by_hand(tmp_path, by_hand):
    base = tmp_path / "flickr30k"
    base.mkdir()
    if by_hand == "folder":
        (base / "flickr30k-images").mkdir()
        (base / "flickr30k-images" / "1.jpg").write_bytes(b"jpg")
        expected = base / "flickr30k-images"
    else:
        write_tar(base / "flickr30k-images.tar.gz", {"flickr30k-images/1.jpg": b"jpg"})
        expected = base / "extracted" / "flickr30k-images"
    (tmp_path / "karpathy").mkdir()
    (tmp_path / "karpathy" / "dataset_flickr30k.json").write_text(FAKE_KARPATHY)
    files = download_flickr30k(tmp_path)
    assert files == DatasetFiles(tmp_path / "karpathy" / "dataset_flickr30k.json", expected)
    assert (files.image_dir / "1.jpg").read_bytes() == b"jpg"


def test_download_coco2014_lays_out_train_and_val(server, tmp_path, monkeypatch):
    sums = {}
    for split in ("train2014", "val2014"):
        body = zip_bytes({f"{split}/COCO_{split}_1.jpg": split.encode()})
        server.add(f"/coco/{split}.zip", body)
        sums[split] = md5(body)
    monkeypatch.setattr(download, "COCO_BASE_URL", server.base + "/coco")
    monkeypatch.setattr(download, "COCO_MD5", sums)
    (tmp_path / "karpathy").mkdir()
    (tmp_path / "karpathy" / "dataset_coco.json").write_text(FAKE_KARPATHY)
    karpathy_json, image_dir = download_coco2014(tmp_path)
    assert image_dir == tmp_path / "coco"
    assert (image_dir / "val2014" / "COCO_val2014_1.jpg").read_bytes() == b"val2014"
    assert not list(image_dir.glob("*.zip"))
