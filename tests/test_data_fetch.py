"""Getting the data: the CIFAR-10 download served from a local HTTP server, and the ImageNet tree check.

The server on 127.0.0.1 serves a generated archive in the layout of cifar-10-binary.tar.gz (a few
records per file; the real one is 170 MB) with HTTP Range support, and can cut a transfer short.
``python -m src.data_fetch`` runs as a subprocess with --url/--md5 pointing at it.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from src.data_fetch import CIFAR10_FILES, CIFAR10_FOLDER
from tests.conftest import REPO, assert_user_error, script_env

RECORD = 3073


def make_archive(records_per_file: int = 4, drop: str | None = None) -> bytes:
    """A .tar.gz holding cifar-10-batches-bin/ like the official archive (minus ``drop``)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for index, name in enumerate(CIFAR10_FILES + ("batches.meta.txt",)):
            if name == drop:
                continue
            data = (b"airplane\n" if name.endswith(".txt")
                    else bytes([index]) * (RECORD * records_per_file))
            info = tarfile.TarInfo(f"{CIFAR10_FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class ArchiveServer:
    """Serves ``payload`` at /cifar-10-binary.tar.gz; honours Range unless told otherwise."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.ranges: list[str | None] = []  # the Range header of every request
        self.cut_after: int | None = None   # close the connection after sending this many bytes
        self.ignore_range = False           # answer like a server without Range support
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                header = self.headers.get("Range")
                server.ranges.append(header)
                if server.ignore_range:
                    header = None
                start = int(header.split("=")[1].split("-")[0]) if header else 0
                body = server.payload[start:]
                if header and start >= len(server.payload):
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206 if header else 200)
                if header:
                    self.send_header("Content-Range", f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.cut_after is not None:
                    body = body[:server.cut_after]
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cifar-10-binary.tar.gz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def md5(self) -> str:
        return hashlib.md5(self.payload).hexdigest()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    served = ArchiveServer(make_archive())
    yield served
    served.close()


def fetch(dest: Path, url: str, md5: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "src.data_fetch", "cifar10", f"--dest={dest}", f"--url={url}",
                           f"--md5={md5}", "--timeout=20", *extra],
                          cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=120)


def test_download_verifies_unpacks_and_rerun_does_not_download_again(server, tmp_path):
    result = fetch(tmp_path, server.url, server.md5)
    assert result.returncode == 0, result.stderr
    folder = tmp_path / CIFAR10_FOLDER
    assert sorted(p.name for p in folder.iterdir()) == sorted(CIFAR10_FILES + ("batches.meta.txt",))
    assert (folder / "data_batch_3.bin").read_bytes() == bytes([2]) * (RECORD * 4)
    assert (tmp_path / "cifar-10-binary.tar.gz").read_bytes() == server.payload
    assert f"verified {tmp_path / 'cifar-10-binary.tar.gz'}" in result.stdout
    assert server.ranges == [None]
    # Only the finished folder and the verified archive are left: no partial or scratch files.
    assert sorted(p.name for p in tmp_path.iterdir()) == [CIFAR10_FOLDER, "cifar-10-binary.tar.gz"]

    again = fetch(tmp_path, server.url, server.md5)
    assert again.returncode == 0 and "is complete; nothing to do" in again.stdout, again.stderr
    (folder / "data_batch_5.bin").unlink()  # an incomplete folder is unpacked again from the verified archive
    repaired = fetch(tmp_path, server.url, server.md5)
    assert repaired.returncode == 0, repaired.stderr
    assert "already downloaded and verified" in repaired.stdout
    assert (folder / "data_batch_5.bin").stat().st_size == RECORD * 4
    assert server.ranges == [None], "a verified archive must not be downloaded again"


def test_checksum_mismatch_deletes_the_download_and_leaves_no_folder(server, tmp_path):
    result = fetch(tmp_path, server.url, "0" * 32)
    assert_user_error(result, 1, "does not match the published " + "0" * 32, server.url)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_resumes_with_a_range_request(server, tmp_path):
    half = len(server.payload) // 2
    server.cut_after = half
    result = fetch(tmp_path, server.url, server.md5)
    assert_user_error(result, 1, "interrupted after", "run the same command again to resume")
    part = tmp_path / "cifar-10-binary.tar.gz.part"
    assert part.stat().st_size == half and not (tmp_path / CIFAR10_FOLDER).exists()

    server.cut_after = None
    resumed = fetch(tmp_path, server.url, server.md5)
    assert resumed.returncode == 0, resumed.stderr
    assert server.ranges == [None, f"bytes={half}-"]
    assert f"resuming cifar-10-binary.tar.gz.part at {half / 1e6:.1f} MB" in resumed.stdout
    assert (tmp_path / "cifar-10-binary.tar.gz").read_bytes() == server.payload
    assert len(list((tmp_path / CIFAR10_FOLDER).iterdir())) == 7


def test_rerun_recovers_from_what_an_earlier_run_left(server, tmp_path):
    archive, part = tmp_path / "cifar-10-binary.tar.gz", tmp_path / "cifar-10-binary.tar.gz.part"
    # A whole .part (killed before the check): the server answers the Range request with 416.
    part.write_bytes(server.payload)
    result = fetch(tmp_path, server.url, server.md5)
    assert result.returncode == 0, result.stderr
    assert server.ranges == [f"bytes={len(server.payload)}-"] and archive.read_bytes() == server.payload

    # A foreign file under the archive's name is replaced; a server without Range support restarts.
    shutil.rmtree(tmp_path / CIFAR10_FOLDER)
    archive.write_bytes(b"something else")
    part.write_bytes(server.payload[:1000])
    server.ignore_range = True
    result = fetch(tmp_path, server.url, server.md5)
    assert result.returncode == 0, result.stderr
    assert "does not match MD5" in result.stdout and "resuming" not in result.stdout
    assert archive.read_bytes() == server.payload and not part.exists()
    assert len(list((tmp_path / CIFAR10_FOLDER).iterdir())) == 7


def test_archive_without_a_batch_leaves_no_half_unpacked_folder(tmp_path):
    served = ArchiveServer(make_archive(drop="data_batch_4.bin"))
    try:
        result = fetch(tmp_path, served.url, served.md5)
    finally:
        served.close()
    assert_user_error(result, 1, "incomplete cifar-10-batches-bin", "data_batch_4.bin is missing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-binary.tar.gz"]


def test_unreachable_url_and_bad_md5_are_one_line_errors(tmp_path):
    result = fetch(tmp_path, "http://127.0.0.1:9/cifar-10-binary.tar.gz", "a" * 32)
    assert_user_error(result, 1, "cannot download http://127.0.0.1:9/cifar-10-binary.tar.gz")
    result = fetch(tmp_path, "http://127.0.0.1:9/x.tar.gz", "xyz")
    assert_user_error(result, 1, "--md5='xyz'", "32 hexadecimal digits")


def test_imagenet_check_counts_and_names_every_problem(image_tree, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "src.data_fetch", "imagenet", str(image_tree / "train"),
                         str(image_tree / "val"), "--num_classes=4"],
                        cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert f"{image_tree / 'train'}: 4 classes, 48 images (12 to 12 per class)" in ok.stdout
    assert "all class folders hold readable images" in ok.stdout

    tree = tmp_path / "train"
    shutil.copytree(image_tree / "train", tree)
    classes = sorted(p for p in tree.iterdir())
    (classes[0] / "notes.txt").write_text("not an image")
    image = next(classes[1].iterdir())
    image.write_bytes(image.read_bytes()[:200])  # a truncated download
    for file in classes[2].iterdir():
        file.unlink()
    Image.new("RGB", (8, 8)).save(tree / "stray.png")  # a file outside class folders is ignored, as by the reader
    bad = subprocess.run([sys.executable, "-m", "src.data_fetch", "imagenet", str(tree), str(image_tree / "val")],
                         cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=120)
    assert_user_error(bad, 1, "3 problem(s)")
    problems = [line for line in bad.stdout.splitlines() if line.startswith("problem:")]
    assert len(problems) == 3, bad.stdout
    assert f"{classes[0] / 'notes.txt'} is not a readable image" in problems[0]
    assert f"{image} is not a readable image" in problems[1]
    assert f"class folder {classes[2]} is empty" in problems[2]
