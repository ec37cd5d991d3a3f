"""Fetching the engines' releases without the network: what it says when nothing can be had, and
a release published as a source archive alone, served from a stand-in index."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from scripts import fetch_peers

MEMBERS = fetch_peers.PEERS["sglang"]


def _source_archive(top: str, files: dict[str, str]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


class _Index:
    """``urlopen`` of an index that lists one source archive (and never a wheel)."""

    def __init__(self, filename: str, data: bytes, sha256: str | None = None):
        self.filename, self.data = filename, data
        self.sha256 = sha256 or hashlib.sha256(data).hexdigest()
        self.asked: list[str] = []

    def urlopen(self, request, timeout):
        url = getattr(request, "full_url", request)
        self.asked.append(url)
        if url.endswith("/sglang/"):
            assert request.get_header("Accept") == fetch_peers.SIMPLE_JSON
            hashes = {"sha256": self.sha256}
            entry = {"filename": self.filename, "url": "https://files/x", "hashes": hashes}
            return io.BytesIO(json.dumps({"files": [entry]}).encode())
        assert url == "https://files/x"
        return io.BytesIO(self.data)


@pytest.fixture
def no_wheel(monkeypatch, tmp_path):
    def refuse(name, version, folder, timeout_s):
        raise RuntimeError(f"cannot download {name}=={version}: no wheel")

    monkeypatch.setattr(fetch_peers, "CACHE", tmp_path)
    monkeypatch.setattr(fetch_peers, "_download_wheel", refuse)
    monkeypatch.delenv("PIP_NO_INDEX", raising=False)
    monkeypatch.setenv("PIP_INDEX_URL", "https://index.test/simple/")
    return tmp_path


def test_fetch_says_why_when_a_release_cannot_be_had(monkeypatch, tmp_path):
    monkeypatch.setattr(fetch_peers, "CACHE", tmp_path)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # as on a machine without the index
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(
        RuntimeError,
        match=r"cannot download sglang==0\.0\.0: .+; no source archive either: PIP_NO_INDEX",
    ):
        fetch_peers.fetch("sglang", "0.0.0")
    assert not (tmp_path / "sglang-0.0.0").exists()


def test_a_release_without_a_wheel_is_unpacked_from_its_source_archive(monkeypatch, no_wheel):
    files = {
        "sglang/srt/eplb/eplb_algorithms/__init__.py": "ALGORITHMS = 1\n",
        "sglang/srt/eplb/expert_location.py": "X = 2\n",
        "sglang/srt/eplb/README.md": "not a module\n",
        "sglang/srt/plugins/__init__.py": "",
        "sglang/srt/server.py": "not ours to take\n",
        "sglang/srt/eplb/../../../../evil.py": "outside the cache\n",
        "setup.py": "",
    }
    index = _Index("sglang-9.9.9.tar.gz", _source_archive("sglang-9.9.9", files))
    monkeypatch.setattr(fetch_peers.urllib.request, "urlopen", index.urlopen)

    root = fetch_peers.fetch("sglang", "9.9.9")

    assert index.asked == ["https://index.test/simple/sglang/", "https://files/x"]
    got = sorted(str(p.relative_to(root)) for p in root.rglob("*.py"))
    taken = [n for n in files if n.startswith(MEMBERS) and n.endswith(".py") and ".." not in n]
    assert got == sorted(taken)
    assert (root / "sglang/srt/eplb/expert_location.py").read_text() == "X = 2\n"
    assert not (no_wheel / "evil.py").exists() and not (root / "evil.py").exists()
    assert not list((no_wheel / "downloads").iterdir())  # the archive is deleted
    assert fetch_peers.fetch("sglang", "9.9.9") == root and len(index.asked) == 2  # cached


def test_a_source_archive_with_the_wrong_digest_is_refused(monkeypatch, no_wheel):
    files = {"sglang/srt/eplb/a.py": "", "sglang/srt/plugins/__init__.py": ""}
    data = _source_archive("sglang-9.9.9", files)
    index = _Index("sglang-9.9.9.tar.gz", data, sha256="0" * 64)
    monkeypatch.setattr(fetch_peers.urllib.request, "urlopen", index.urlopen)
    with pytest.raises(
        RuntimeError, match=r"sglang-9\.9\.9\.tar\.gz: sha256 [0-9a-f]{64}, the index"
    ):
        fetch_peers.fetch("sglang", "9.9.9")
    assert not (no_wheel / "sglang-9.9.9").exists()
    assert not list((no_wheel / "downloads").iterdir())


def test_a_source_archive_without_the_modules_is_refused(monkeypatch, no_wheel):
    data = _source_archive("sglang-9.9.9", {"sglang/srt/eplb/a.py": ""})
    monkeypatch.setattr(
        fetch_peers.urllib.request, "urlopen", _Index("sglang-9.9.9.tar.gz", data).urlopen
    )
    with pytest.raises(
        RuntimeError, match=r"sglang-9\.9\.9\.tar\.gz has no \['sglang/srt/plugins/__init__\.py'\]"
    ):
        fetch_peers.fetch("sglang", "9.9.9")
    assert not (no_wheel / "sglang-9.9.9" / ".complete").exists()
    assert not list((no_wheel / "downloads").iterdir())


def test_an_index_without_the_release_says_so(monkeypatch, no_wheel):
    data = _source_archive("sglang-1.0.0", {})
    monkeypatch.setattr(
        fetch_peers.urllib.request, "urlopen", _Index("sglang-1.0.0.tar.gz", data).urlopen
    )
    with pytest.raises(
        RuntimeError,
        match=r"no wheel; no source archive either: .*lists no sglang-9\.9\.9\.tar\.gz",
    ):
        fetch_peers.fetch("sglang", "9.9.9")


def test_newer_releases_are_those_above_the_newest_tested(monkeypatch):
    page = {"files": [], "versions": ["0.5.11", "0.5.23", "0.6.0", "0.5.24rc1", "2023.1-legacy"]}
    monkeypatch.setattr(fetch_peers, "VERSIONS", {"sglang": ("0.5.23", "0.5.11")})
    monkeypatch.setattr(fetch_peers, "_index_page", lambda name, timeout_s: ("url", page))
    assert fetch_peers.newer_releases("sglang") == ["0.5.24rc1", "0.6.0"]


def test_newer_releases_include_those_that_replace_a_tested_one(monkeypatch):
    """vllm-ascend 0.23.0.post1, its newest stable release, was not listed: only releases
    above the newest tested (0.30.0rc2) were."""
    page = {"files": [], "versions": ["0.13.0", "0.23.0", "0.23.0.post1", "0.24.0", "0.30.0rc2"]}
    monkeypatch.setattr(fetch_peers, "VERSIONS", {"vllm-ascend": ("0.30.0rc2", "0.23.0")})
    monkeypatch.setattr(fetch_peers, "_index_page", lambda name, timeout_s: ("url", page))
    assert fetch_peers.newer_releases("vllm-ascend") == ["0.23.0.post1"]
    page["versions"].append("0.30.0")
    assert fetch_peers.newer_releases("vllm-ascend") == ["0.23.0.post1", "0.30.0"]


def test_newer_says_what_is_untested_and_why_it_cannot_tell(monkeypatch, capsys):
    monkeypatch.setattr(fetch_peers, "VERSIONS", {"sglang": ("0.5.23",), "vllm": ("0.33.0",)})
    monkeypatch.setattr(fetch_peers, "PEERS", {"sglang": (), "vllm": ()})
    monkeypatch.setenv("PIP_INDEX_URL", "https://index.test/simple")
    monkeypatch.delenv("PIP_NO_INDEX", raising=False)
    pages = {"sglang": {"versions": ["0.5.23", "0.5.24"]}, "vllm": {"versions": ["0.33.0"]}}

    def urlopen(request, timeout):
        name = request.full_url.rstrip("/").rsplit("/", 1)[-1]
        return io.BytesIO(json.dumps(pages[name]).encode())

    monkeypatch.setattr(fetch_peers.urllib.request, "urlopen", urlopen)
    assert fetch_peers.main(["--newer"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "sglang: tested up to 0.5.23; newer: 0.5.24",
        "vllm: tested up to 0.33.0; newer: none",
    ]

    monkeypatch.setenv("PIP_NO_INDEX", "1")
    assert fetch_peers.main(["--newer", "sglang"]) == 1
    assert capsys.readouterr().err.strip() == "sglang: PIP_NO_INDEX is set"


def test_the_index_is_the_one_pip_uses(monkeypatch, tmp_path):
    config = tmp_path / "pip.conf"
    config.write_text("[global]\nindex-url = https://mirror.test/simple/\n")
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", str(config))
    assert fetch_peers._index_url() == "https://mirror.test/simple"
    monkeypatch.setenv("PIP_INDEX_URL", "https://env.test/simple")
    assert fetch_peers._index_url() == "https://env.test/simple"


def test_help_is_usage_not_an_engine(capsys):
    assert fetch_peers.main(["--help"]) == 0
    assert "python scripts/fetch_peers.py --newer" in capsys.readouterr().out
