"""README.md states only what is true of the repository: the files its Layout names exist, the commands
it shows name scripts that exist and flags those scripts accept, its links lead to files, and its test
command is the one CI runs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
# Entry scripts whose flags are the config's keys (src/model_utils/config.py, SCHEMA).
CONFIG_DRIVEN = {"train.py", "eval.py", "export.py", "predict.py", "preprocess.py"}


def _section(title: str) -> str:
    parts = re.split(rf"^## {re.escape(title)}\n", README, maxsplit=1, flags=re.M)
    assert len(parts) == 2, f"README has no section '## {title}'"
    return re.split(r"^## ", parts[1], maxsplit=1, flags=re.M)[0]


def _command_lines() -> list[str]:
    """Every line of the README's bash blocks and inline code spans, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return lines + re.findall(r"`([^`\n]*(?:python|bash) [^`\n]*)`", README)


def _words(line: str) -> list[str]:
    line = line.split("#", 1)[0]
    try:
        return shlex.split(line)
    except ValueError:
        return line.split()


def test_every_path_of_the_layout_exists():
    block = re.search(r"```\n(.*?)```", _section("Layout"), re.S).group(1)
    named = []
    for line in block.splitlines():
        if line.startswith(" "):
            continue  # a description's continuation line
        head = re.split(r"\s{3,}", line.strip(), maxsplit=1)[0]
        named += [word for word in head.split() if "." in word or word.endswith("/")]
    assert len(named) >= 30
    missing = [path for path in named if not (REPO / path).exists()]
    assert not missing, missing
    for name in re.findall(r"`([\w.]+\.(?:sh|py))`", _section("Layout").split("```")[-1]):
        assert (REPO / "scripts" / name).is_file(), name


def test_every_command_names_a_script_that_exists_and_flags_it_accepts():
    import postprocess
    from src.model_utils.config import SCHEMA

    checked = 0
    for line in _command_lines():
        words = _words(line)
        for index, word in enumerate(words):
            if word == "bash" and index + 1 < len(words) and words[index + 1].endswith(".sh"):
                assert (REPO / words[index + 1]).is_file(), line
                checked += 1
            if word not in ("python", "python3") or index + 1 >= len(words):
                continue
            target, rest = words[index + 1], words[index + 2:]
            if target == "-m" and rest[0] not in ("venv", "pytest"):
                assert (REPO / (rest[0].replace(".", "/") + ".py")).is_file(), line
                checked += 1
            elif target in CONFIG_DRIVEN:
                assert (REPO / target).is_file(), line
                flags = [w.split("=", 1)[0][2:] for w in rest if w.startswith("--")]
                unknown = [f for f in flags if f not in SCHEMA and f not in ("config_path", "help")]
                assert not unknown, (line, unknown)
                checked += 1
            elif target == "postprocess.py":
                postprocess.parse_args([w for w in rest if w.startswith("--")])  # exits on a flag it lacks
                checked += 1
            elif target.endswith(".py"):
                assert (REPO / target).is_file(), line
                checked += 1
    assert checked >= 20


def test_links_lead_to_files():
    links = [target for target in re.findall(r"\]\(([^)#]+)\)", README) if not target.startswith("http")]
    assert links
    missing = [target for target in links if not (REPO / target).exists()]
    assert not missing, missing


def test_the_test_command_is_the_one_ci_runs():
    readme = re.search(r"^python3 -m venv \.venv .*pytest -q$", README, re.M).group(0)
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("python3 -m venv")]
    assert ci == [readme]


def test_every_config_key_in_the_config_table_exists():
    from src.model_utils.config import SCHEMA

    rows = re.findall(r"^\| ([\w/]+) \|", _section("Configs"), re.M)
    keys = [key for row in rows if row != "key" for key in (["image_height", "image_width"]
                                                             if row == "image_height/width" else [row])]
    assert len(keys) >= 10
    assert not [key for key in keys if key not in SCHEMA]


def test_the_docs_it_links_exist_and_are_not_empty():
    for name in ("PERFORMANCE.md", "INFERENCE.md", "RELIABILITY.md"):
        assert f"docs/{name}" in README
        assert Path(REPO / "docs" / name).stat().st_size > 1000
