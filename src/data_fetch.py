"""Getting the data: download CIFAR-10 (binary version), check an ImageNet class-folder tree.

    python -m src.data_fetch cifar10 --dest DIR            # -> DIR/cifar-10-batches-bin
    python -m src.data_fetch imagenet DIR/train DIR/val    # class folders, readable images, counts

The CIFAR-10 download is checked against its published MD5 and is safe to re-run: a verified
archive is not downloaded again, an interrupted download resumes where it stopped (HTTP Range),
and the folder appears only when completely unpacked. ImageNet cannot be downloaded
automatically (it needs an account at image-net.org); the check names every problem it finds.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from src.errors import UserError, run_main

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # published on https://www.cs.toronto.edu/~kriz/cifar.html
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-bin"
CIFAR10_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
CIFAR10_RECORD_BYTES = 3073
CIFAR10_RECORDS_PER_FILE = 10_000
CHUNK_BYTES = 1 << 20
MAX_PROBLEMS_LISTED = 20


# ---------------------------------------------------------------------------------------------
# Download with resume and checksum.


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _resumed_from(response, have: int) -> int:
    """Where the server's answer starts: ``have`` for a matching 206, 0 when it sent everything."""
    if have and response.status == 206:
        match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
        if match and int(match.group(1)) == have:
            return have
    return 0


def download(url: str, part: Path, timeout: float = 60.0) -> None:
    """Download ``url`` into ``part``, continuing a partial file with an HTTP Range request.

    An interruption keeps ``part`` so that the next call resumes; it raises a UserError that
    says so.
    """
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to send: the file is whole; the checksum decides
            return
        raise UserError(f"downloading {url} failed: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(f"cannot download {url}: {reason}; check the network, or pass --url of a mirror") from None
    with response:
        start = _resumed_from(response, have)
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        if start:
            print(f"resuming {part.name} at {start / 1e6:.1f} MB", flush=True)
        written = start
        next_report = 10
        try:
            with open(part, "ab" if start else "wb") as handle:
                while chunk := response.read(CHUNK_BYTES):
                    handle.write(chunk)
                    written += len(chunk)
                    if total and 100 * written // total >= next_report:
                        print(f"{part.name}: {100 * written // total}% ({written / 1e6:.1f} of "
                              f"{total / 1e6:.1f} MB)", flush=True)
                        next_report = 100 * written // total + 10
        except (http.client.IncompleteRead, OSError) as err:
            raise UserError(_interrupted(url, part, written, total, err)) from None
    if total is not None and written < total:
        raise UserError(_interrupted(url, part, written, total, "connection closed"))


def _interrupted(url: str, part: Path, written: int, total: int | None, reason) -> str:
    of_total = f" of {total}" if total else ""
    return (f"download of {url} interrupted after {written}{of_total} bytes ({reason}); {part} is kept: "
            "run the same command again to resume")


def fetch_archive(url: str, archive: Path, md5: str, timeout: float = 60.0) -> Path:
    """``archive`` downloaded from ``url`` and verified; a verified archive is not fetched again."""
    if archive.is_file():
        if md5sum(archive) == md5:
            print(f"{archive} is already downloaded and verified (MD5 {md5})", flush=True)
            return archive
        print(f"{archive} does not match MD5 {md5}: downloading it again", flush=True)
        archive.unlink()
    part = archive.with_name(archive.name + ".part")
    print(f"downloading {url} -> {archive}", flush=True)
    download(url, part, timeout)
    got = md5sum(part)
    if got != md5:
        part.unlink()
        raise UserError(f"{url}: downloaded MD5 {got} does not match the published {md5}; the corrupt download was "
                        "deleted, run the command again (or check --url)")
    os.replace(part, archive)
    print(f"verified {archive} (MD5 {md5})", flush=True)
    return archive


# ---------------------------------------------------------------------------------------------
# CIFAR-10.


def cifar10_problems(folder: Path, records_per_file: int | None = None) -> list[str]:
    """What keeps ``folder`` from being a complete cifar-10-batches-bin (empty when complete)."""
    problems = []
    for name in CIFAR10_FILES:
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
            continue
        size = path.stat().st_size
        if size == 0 or size % CIFAR10_RECORD_BYTES:
            problems.append(f"{name}: {size} bytes is not a whole number of {CIFAR10_RECORD_BYTES}-byte records")
        elif records_per_file and size != records_per_file * CIFAR10_RECORD_BYTES:
            problems.append(f"{name}: {size // CIFAR10_RECORD_BYTES} records, expected {records_per_file}")
    return problems


def unpack_cifar10(archive: Path, folder: Path, records_per_file: int | None = None) -> None:
    """Unpack the archive's cifar-10-batches-bin as ``folder``, which appears only when complete."""
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}.unpack-", dir=folder.parent))
    try:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(scratch, filter="data")
        except (tarfile.TarError, EOFError, OSError) as err:
            raise UserError(f"{archive}: cannot unpack it ({err}); delete it and run the command again") from None
        unpacked = next((p for p in scratch.rglob(CIFAR10_FOLDER) if p.is_dir()), None)
        if unpacked is None:
            raise UserError(f"{archive} holds no {CIFAR10_FOLDER}/ folder: not the CIFAR-10 binary archive")
        problems = cifar10_problems(unpacked, records_per_file)
        if problems:
            raise UserError(f"{archive} unpacked an incomplete {CIFAR10_FOLDER}: {'; '.join(problems)}")
        if folder.exists():
            old = scratch / "previous"
            os.replace(folder, old)  # the incomplete folder goes away with the scratch folder
        os.replace(unpacked, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def fetch_cifar10(dest: str | Path, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5, timeout: float = 60.0) -> Path:
    """Make ``dest/cifar-10-batches-bin`` complete, downloading and unpacking only what is needed."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    folder = dest / CIFAR10_FOLDER
    # The published archive holds 10,000 records per file; a mirror given with its own MD5 may differ.
    records = CIFAR10_RECORDS_PER_FILE if md5.lower() == CIFAR10_MD5 else None
    if folder.is_dir():
        problems = cifar10_problems(folder, records)
        if not problems:
            print(f"{folder} is complete; nothing to do", flush=True)
            return folder
        print(f"{folder} is incomplete ({problems[0]}): unpacking it again", flush=True)
    archive = fetch_archive(url, dest / CIFAR10_ARCHIVE, md5.lower(), timeout)
    unpack_cifar10(archive, folder, records)
    print(f"CIFAR-10 is ready in {folder} (train_data_path and val_data_path)", flush=True)
    return folder


# ---------------------------------------------------------------------------------------------
# ImageNet class-folder trees.


@dataclass
class TreeReport:
    """Counts and problems of one class-folder tree."""

    root: Path
    images_per_class: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        return sum(self.images_per_class.values())

    def summary(self) -> str:
        counts = self.images_per_class.values()
        spread = f" ({min(counts)} to {max(counts)} per class)" if counts else ""
        return f"{self.root}: {len(self.images_per_class)} classes, {self.num_images} images{spread}"


def _unreadable(path: Path) -> str | None:
    """Why ``path`` is not a readable image, or None when it is."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))  # JPEGs decode at reduced scale: fast, yet every byte is read
            image.load()
    except Exception as err:  # PIL raises many types for broken files; the message is what matters
        return str(err) or type(err).__name__
    return None


def check_image_tree(root: str | Path, max_per_class: int = 0) -> TreeReport:
    """Class folders of ``root``: each must hold files, and each file must be a readable image.

    ``max_per_class`` > 0 opens only that many images per class (a quick check of a large tree).
    """
    root = Path(root)
    report = TreeReport(root)
    if not root.is_dir():
        report.problems.append(f"{root} does not exist")
        return report
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if not classes:
        report.problems.append(f"{root} has no class folders (expected {root}/<class>/<image>)")
    for folder in classes:
        files = sorted(p for p in folder.iterdir() if p.is_file())
        report.images_per_class[folder.name] = len(files)
        if not files:
            report.problems.append(f"class folder {folder} is empty")
        for path in files[:max_per_class or None]:
            reason = _unreadable(path)
            if reason:
                report.problems.append(f"{path} is not a readable image ({reason})")
    return report


def compare_classes(reports: Sequence[TreeReport]) -> list[str]:
    """Labels are the sorted class-folder names: every tree must have the same classes."""
    if len(reports) < 2:
        return []
    first = reports[0]
    problems = []
    for other in reports[1:]:
        missing = sorted(set(first.images_per_class) - set(other.images_per_class))
        extra = sorted(set(other.images_per_class) - set(first.images_per_class))
        if missing or extra:
            problems.append(f"{other.root} and {first.root} have different classes (missing in {other.root}: "
                            f"{', '.join(missing[:5]) or 'none'}; extra: {', '.join(extra[:5]) or 'none'}), "
                            "so their labels would not match")
    return problems


def check_imagenet(trees: Sequence[str | Path], max_per_class: int = 0, num_classes: int | None = None) -> None:
    """Print each tree's counts and problems; raise one UserError summing the problems up."""
    reports = [check_image_tree(tree, max_per_class) for tree in trees]
    problems = [p for report in reports for p in report.problems] + compare_classes(reports)
    for report in reports:
        print(report.summary(), flush=True)
        if num_classes is not None and report.images_per_class and len(report.images_per_class) != num_classes:
            problems.append(f"{report.root} has {len(report.images_per_class)} class folders, "
                            f"expected num_classes={num_classes}")
    for problem in problems[:MAX_PROBLEMS_LISTED]:
        print(f"problem: {problem}", flush=True)
    if len(problems) > MAX_PROBLEMS_LISTED:
        print(f"... and {len(problems) - MAX_PROBLEMS_LISTED} more problems", flush=True)
    if problems:
        raise UserError(f"{len(problems)} problem(s) in {', '.join(map(str, trees))}; the first: {problems[0]}")
    print("all class folders hold readable images", flush=True)


# ---------------------------------------------------------------------------------------------
# Command line.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m src.data_fetch", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="dataset", required=True)
    cifar = commands.add_parser("cifar10", help="download and unpack CIFAR-10 (binary version)")
    cifar.add_argument("--dest", required=True, help="folder that receives cifar-10-batches-bin/")
    cifar.add_argument("--url", default=CIFAR10_URL, help="archive URL (a mirror; default: the official one)")
    cifar.add_argument("--md5", default=CIFAR10_MD5, help="MD5 of the archive at --url (default: the published one)")
    cifar.add_argument("--timeout", type=float, default=60.0, help="seconds without data before giving up")
    imagenet = commands.add_parser("imagenet", help="check ImageNet-style class-folder trees (train/, val/)")
    imagenet.add_argument("trees", nargs="+", help="folders of class sub-folders, e.g. DIR/train DIR/val")
    imagenet.add_argument("--max_per_class", type=int, default=0,
                          help="open at most this many images per class (0 = every image)")
    imagenet.add_argument("--num_classes", type=int, default=None, help="expected number of class folders")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.dataset == "cifar10":
        if not re.fullmatch(r"[0-9a-fA-F]{32}", args.md5):
            raise UserError(f"--md5={args.md5!r} is not an MD5 checksum; expected 32 hexadecimal digits")
        fetch_cifar10(args.dest, args.url, args.md5, args.timeout)
    else:
        check_imagenet(args.trees, args.max_per_class, args.num_classes)


if __name__ == "__main__":
    run_main(main)
