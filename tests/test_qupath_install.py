"""``milsil qupath install`` against a local Maven repository (http.server in a thread; the
real internet is never touched): the jar set, checksums, reruns, refusals, ``--from``, the
scripts in QuPath's user directory, the README's list, and the scripts inside the wheel."""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
from conftest import OPEN_MODE

from milsil.cli import main
from milsil.client import qupath_setup as qs

ROOT = Path(__file__).resolve().parents[1]
DEBIAN_JAVA = Path("/usr/share/java")
# Debian's grpc-java 1.41.3 & co (libgrpc-java, libprotobuf-java, libperfmark-java) stand in
# for the Maven Central jars: the content is what gets checksummed. Debian has no
# grpc-util or grpc-netty-shaded; those get Debian's grpc-netty or a small made-up jar.
DEBIAN_JARS = {
    "grpc-api": "grpc-api.jar",
    "grpc-context": "grpc-context.jar",
    "grpc-core": "grpc-core.jar",
    "grpc-stub": "grpc-stub.jar",
    "grpc-netty-shaded": "grpc-netty.jar",
    "protobuf-java": "protobuf.jar",
    "perfmark-api": "perfmark-api.jar",
}


def _jar_bytes(jar: qs.Jar) -> bytes:
    debian = DEBIAN_JAVA / DEBIAN_JARS.get(jar.artifact, "-")
    if debian.is_file():
        return debian.read_bytes()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("META-INF/MANIFEST.MF", f"Manifest-Version: 1.0\nName: {jar.coordinates}\n")
    return buf.getvalue()


def _hex(data: bytes, algo: str = "sha1") -> str:
    return hashlib.new(algo, data).hexdigest()


class MavenRepo:
    """A folder laid out like Maven Central, served over HTTP; records every GET/HEAD."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        self.content = {jar: _jar_bytes(jar) for jar in qs.JARS}
        for jar, data in self.content.items():
            self.put(jar, data)
        repo = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):  # noqa: N802 - http.server's name
                repo.requests.append(self.path)
                super().do_GET()

            def do_HEAD(self):  # noqa: N802
                repo.requests.append("HEAD " + self.path)
                super().do_HEAD()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/maven2"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def path(self, jar: qs.Jar) -> Path:
        return self.root / "maven2" / jar.maven_path

    def put(self, jar: qs.Jar, data: bytes, sha1_of: bytes | None = None) -> None:
        """Serve ``data`` as the jar and a .sha1 of ``sha1_of`` (default: of ``data``)."""
        path = self.path(jar)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        Path(f"{path}.sha1").write_text(_hex(data if sha1_of is None else sha1_of) + "\n")

    def jar_gets(self) -> list[str]:
        return [r for r in self.requests if r.endswith(".jar")]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def maven(tmp_path):
    repo = MavenRepo(tmp_path / "www")
    yield repo
    repo.close()


@pytest.fixture
def user_dir(tmp_path):
    path = tmp_path / "QuPath" / "v0.6"
    path.mkdir(parents=True)
    return path


def _run(*argv: str) -> int:
    return main(["qupath", "install", *argv])


def _assert_scripts_installed(user_dir: Path) -> None:
    dest = user_dir / "scripts" / "milsil"
    scripts = sorted((ROOT / "qupath_scripts").glob("*.groovy"))
    lib = sorted((ROOT / "qupath_scripts" / "lib").glob("*.groovy"))
    assert scripts and lib
    for src in scripts:
        assert (dest / src.name).read_bytes() == src.read_bytes()
    for src in lib:
        assert (dest / "lib" / src.name).read_bytes() == src.read_bytes()
    # The scripts' lib-locating block: lib/MilsilBootstrap.groovy beside the running script;
    # MilsilClient.findDescriptor: milsil_v1.desc in that folder.
    assert (dest / "lib" / "MilsilBootstrap.groovy").is_file()
    desc = (ROOT / "proto" / "milsil_v1.desc").read_bytes()
    assert (dest / "milsil_v1.desc").read_bytes() == desc


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ------------------------------------------------------------------ downloads


def test_fresh_install_downloads_checks_and_copies_everything(maven, user_dir, capsys):
    assert _run("--qupath-user-dir", str(user_dir), "--maven-url", maven.url) == 0
    out = capsys.readouterr().out
    ext = user_dir / "extensions"
    for jar, data in maven.content.items():
        installed = ext / jar.filename
        assert installed.read_bytes() == data, jar.filename
        # The checksum it was checked against, kept beside it (Maven's way).
        assert (ext / f"{jar.filename}.sha1").read_text().strip() == _hex(data)
        assert f"{jar.filename}: sha1 " in out
    assert "grpc-netty-shaded-1.69.1.jar" in {p.name for p in ext.iterdir()}
    assert _leftovers(ext) == []
    _assert_scripts_installed(user_dir)
    assert "Restart QuPath" in out and "Automate > User scripts... > milsil" in out
    assert "server = 'host:port'" in out


def test_rerun_skips_everything_without_downloading(maven, user_dir, capsys):
    assert _run("--qupath-user-dir", str(user_dir), "--maven-url", maven.url) == 0
    ext = user_dir / "extensions"
    before = {p.name: p.stat().st_mtime_ns for p in ext.iterdir()}
    script = user_dir / "scripts" / "milsil" / "tma_batch.groovy"
    script_mtime = script.stat().st_mtime_ns
    maven.requests.clear()
    capsys.readouterr()
    assert _run("--qupath-user-dir", str(user_dir), "--maven-url", maven.url) == 0
    out = capsys.readouterr().out
    # Checked against the checksums kept beside the jars: no network at all.
    assert maven.requests == []
    assert out.count("already there (sha1 checked)") == len(qs.JARS)
    assert "all there already" in out
    assert {p.name: p.stat().st_mtime_ns for p in ext.iterdir()} == before
    assert script.stat().st_mtime_ns == script_mtime


def test_a_jar_put_there_by_hand_is_checked_against_the_repository_not_downloaded(
    maven, user_dir, capsys
):
    jar = qs.JARS[0]
    ext = user_dir / "extensions"
    ext.mkdir()
    (ext / jar.filename).write_bytes(maven.content[jar])
    assert _run("--qupath-user-dir", str(user_dir), "--maven-url", maven.url) == 0
    assert maven.path(jar).name not in " ".join(maven.jar_gets())
    assert (ext / f"{jar.filename}.sha1").is_file()
    assert f"{jar.filename}: already there (sha1 checked against {maven.url})" in (
        capsys.readouterr().out
    )


def test_a_damaged_installed_jar_is_replaced(maven, user_dir):
    assert _run("--qupath-user-dir", str(user_dir), "--maven-url", maven.url) == 0
    jar = qs.JARS[2]
    target = user_dir / "extensions" / jar.filename
    target.write_bytes(b"damaged")
    assert _run("--qupath-user-dir", str(user_dir), "--maven-url", maven.url) == 0
    assert target.read_bytes() == maven.content[jar]


def test_a_corrupted_download_is_refused_and_leaves_nothing(maven, user_dir, capsys):
    jar = next(j for j in qs.JARS if j.artifact == "grpc-core")
    good = maven.content[jar]
    maven.put(jar, good[:-100] + b"x" * 100, sha1_of=good)  # bytes that do not match .sha1
    assert _run("--qupath-user-dir", str(user_dir), "--maven-url", maven.url) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    url = f"{maven.url}/io/grpc/grpc-core/1.69.1/grpc-core-1.69.1.jar"
    bad = _hex(good[:-100] + b"x" * 100)
    assert err == (
        f"milsil qupath: error: grpc-core-1.69.1.jar from {url} fails its checksum: expected "
        f"sha1 {_hex(good)}, got {bad}; nothing was installed for it"
    )
    ext = user_dir / "extensions"
    names = {p.name for p in ext.iterdir()}
    assert not any(n.startswith("grpc-core") for n in names), names
    assert _leftovers(ext) == []
    assert not any(n.startswith(".") for n in names), names


def test_the_strongest_published_checksum_is_the_one_checked(maven, user_dir, capsys):
    jar = next(j for j in qs.JARS if j.artifact == "grpc-api")
    data = maven.content[jar]
    sha512 = Path(f"{maven.path(jar)}.sha512")
    sha512.write_text(_hex(data, "sha512") + "  grpc-api-1.69.1.jar\n")
    assert _run("--qupath-user-dir", str(user_dir), "--maven-url", maven.url) == 0
    ext = user_dir / "extensions"
    assert (ext / f"{jar.filename}.sha512").read_text().strip() == _hex(data, "sha512")
    assert not (ext / f"{jar.filename}.sha1").exists()
    assert f"{jar.filename}: sha512 " in capsys.readouterr().out
    # A wrong .sha512 is refused although the .sha1 beside it matches.
    (ext / jar.filename).unlink()
    sha512.write_text("0" * 128 + "\n")
    assert _run("--qupath-user-dir", str(user_dir), "--maven-url", maven.url) == 2
    assert f"fails its checksum: expected sha512 {'0' * 128}" in capsys.readouterr().err
    assert not (ext / jar.filename).exists()


def test_a_missing_jar_is_a_clear_error(maven, user_dir, capsys):
    jar = next(j for j in qs.JARS if j.artifact == "grpc-util")
    shutil.rmtree(maven.path(jar).parent)
    assert _run("--qupath-user-dir", str(user_dir), "--maven-url", maven.url) == 2
    err = capsys.readouterr().err
    assert (
        f"io.grpc:grpc-util:1.69.1 not found: {jar.url(maven.url)} (HTTP 404); is {maven.url} "
        "a Maven repository (--maven-url) that holds it?"
    ) in err
    assert not (user_dir / "extensions" / jar.filename).exists()


def test_a_jar_without_any_checksum_is_refused(maven, user_dir, capsys):
    jar = qs.JARS[-1]
    Path(f"{maven.path(jar)}.sha1").unlink()
    assert _run("--qupath-user-dir", str(user_dir), "--maven-url", maven.url) == 2
    assert "has no .sha512, .sha256 or .sha1 file beside it; refusing" in capsys.readouterr().err
    assert not (user_dir / "extensions" / jar.filename).exists()


def test_offline_and_silent_servers_fail_fast_with_the_way_out(user_dir, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert _run("--qupath-user-dir", str(user_dir), "--maven-url", f"http://127.0.0.1:{port}") == 2
    err = capsys.readouterr().err
    assert "cannot download http://127.0.0.1:" in err and "offline?" in err
    assert "milsil qupath install --from JAR_DIR" in err
    # A server that accepts but never answers: the timeout ends it.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        assert _run("--qupath-user-dir", str(user_dir), "--maven-url", url, "--timeout", "0.3") == 2
    err = capsys.readouterr().err
    assert "(no answer within 0.3 s); offline?" in err


# ------------------------------------------------------------------ --from JAR_DIR


def _jar_dir(maven: MavenRepo, folder: Path, sha1: bool = True) -> Path:
    folder.mkdir()
    for jar, data in maven.content.items():
        (folder / jar.filename).write_bytes(data)
        if sha1:
            (folder / f"{jar.filename}.sha1").write_text(_hex(data) + "\n")
    return folder


def test_from_a_local_folder(maven, user_dir, tmp_path, capsys):
    jars = _jar_dir(maven, tmp_path / "jars")
    (jars / f"{qs.JARS[0].filename}.sha1").unlink()  # one without a checksum file
    assert _run("--qupath-user-dir", str(user_dir), "--from", str(jars)) == 0
    out = capsys.readouterr().out
    ext = user_dir / "extensions"
    for jar, data in maven.content.items():
        assert (ext / jar.filename).read_bytes() == data
    assert f"{qs.JARS[0].filename}: installed from" in out and "unchecked" in out
    assert out.count("sha1 checked") == len(qs.JARS) - 1
    assert maven.requests == []
    _assert_scripts_installed(user_dir)
    # Rerun: nothing copied again.
    assert _run("--qupath-user-dir", str(user_dir), "--from", str(jars)) == 0
    assert capsys.readouterr().out.count("already there (same as") == len(qs.JARS)


def test_installed_files_take_the_mode_open_gives(maven, user_dir, tmp_path, umask):
    """Under umask 022 the jars, scripts, lib and descriptor are 0644 (folders 0755): a
    QuPath run by another user, or a shared install, reads them."""
    jars = _jar_dir(maven, tmp_path / "jars")
    assert _run("--qupath-user-dir", str(user_dir), "--from", str(jars)) == 0
    installed = [*(user_dir / "extensions").iterdir(), *(user_dir / "scripts").rglob("*")]
    files = [p for p in installed if p.is_file()]
    names = {p.name for p in files}
    assert {"MilsilClient.groovy", "classify_cells.groovy", qs.DESCRIPTOR_NAME} <= names
    assert {jar.filename for jar in qs.JARS} <= names
    folder_mode = {0o022: 0o755, 0o077: 0o700}[umask]
    modes = {str(p.relative_to(user_dir)): stat.S_IMODE(p.stat().st_mode) for p in files}
    assert {name: oct(m) for name, m in modes.items() if m != OPEN_MODE[umask]} == {}
    folders = [p for p in installed if p.is_dir()]
    assert folders and all(stat.S_IMODE(p.stat().st_mode) == folder_mode for p in folders)


def test_from_a_maven_layout_folder(maven, user_dir):
    assert _run("--qupath-user-dir", str(user_dir), "--from", str(maven.root / "maven2")) == 0
    for jar, data in maven.content.items():
        assert (user_dir / "extensions" / jar.filename).read_bytes() == data


def test_from_a_folder_missing_a_jar_is_refused_before_anything_is_copied(
    maven, user_dir, tmp_path, capsys
):
    jars = _jar_dir(maven, tmp_path / "jars")
    util = next(j for j in qs.JARS if j.artifact == "grpc-util")
    (jars / util.filename).rename(jars / "grpc-util-1.60.0.jar")
    assert _run("--qupath-user-dir", str(user_dir), "--from", str(jars)) == 2
    err = capsys.readouterr().err
    assert (
        f"--from {jars} lacks 1 of the {len(qs.JARS)} jars: grpc-util-1.69.1.jar "
        "(io.grpc:grpc-util:1.69.1; found grpc-util-1.60.0.jar: another version)"
    ) in err
    assert not (user_dir / "extensions").exists()
    assert not (user_dir / "scripts").exists()


def test_from_a_folder_with_a_bad_checksum_is_refused(maven, user_dir, tmp_path, capsys):
    jars = _jar_dir(maven, tmp_path / "jars")
    jar = qs.JARS[3]
    (jars / f"{jar.filename}.sha1").write_text("f" * 40 + "\n")
    assert _run("--qupath-user-dir", str(user_dir), "--from", str(jars)) == 2
    err = capsys.readouterr().err
    assert f"{jar.filename} from {jars / jar.filename} fails its checksum: expected sha1 " in err
    assert not (user_dir / "extensions").exists()


# ------------------------------------------------------------------ user directory, scripts


def test_the_default_user_dir_is_qupath_06s(maven, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("USERPROFILE", str(tmp_path / "home"))
    (tmp_path / "home" / "QuPath" / "v0.5").mkdir(parents=True)
    assert _run("--maven-url", maven.url) == 2
    err = capsys.readouterr().err.strip()
    default = tmp_path / "home" / "QuPath" / "v0.6"
    assert f"no QuPath 0.6 user directory at {default}: pass --qupath-user-dir DIR" in err
    assert str(tmp_path / "home" / "QuPath" / "v0.5") in err
    default.mkdir()
    assert _run("--maven-url", maven.url) == 0
    assert (default / "extensions" / qs.JARS[0].filename).is_file()
    assert qs.default_user_dir(Path("/h")) == Path("/h/QuPath/v0.6")


def test_a_user_dir_that_does_not_exist_is_refused(tmp_path, capsys):
    assert _run("--qupath-user-dir", str(tmp_path / "nope"), "--from", str(tmp_path)) == 2
    assert "QuPath user directory" in capsys.readouterr().err


def test_a_script_the_user_edited_is_kept_as_a_backup(maven, user_dir, tmp_path, capsys):
    jars = _jar_dir(maven, tmp_path / "jars")
    assert _run("--qupath-user-dir", str(user_dir), "--from", str(jars)) == 0
    script = user_dir / "scripts" / "milsil" / "heatmap_to_annotations.groovy"
    edited = script.read_text().replace("'localhost:50051'", "'gpu-box:50051'")
    script.write_text(edited)
    assert _run("--qupath-user-dir", str(user_dir), "--from", str(jars)) == 0
    assert "yours is kept as heatmap_to_annotations.groovy.bak" in capsys.readouterr().out
    assert (script.parent / "heatmap_to_annotations.groovy.bak").read_text() == edited
    _assert_scripts_installed(user_dir)


# ------------------------------------------------------------------ one list, one wheel


def test_the_readme_lists_exactly_the_installers_jars():
    text = (ROOT / "qupath_scripts" / "README.md").read_text()
    rows = re.findall(r"^\| `([\w.-]+:[\w.-]+:[\w.-]+)` \| (.+?) \|$", text, re.MULTILINE)
    assert [c for c, _ in rows] == [j.coordinates for j in qs.JARS]
    assert [w for _, w in rows] == [j.why for j in qs.JARS]


def test_the_wheel_ships_the_scripts_and_the_descriptor(tmp_path):
    pytest.importorskip("setuptools", reason="builds the wheel offline (--no-build-isolation)")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("milsil", "server", "qupath_scripts", "proto"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps"]
        + ["-w", str(tmp_path / "dist"), str(src)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("milsil-*.whl")
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(unpacked)
        assert (z.read("milsil-0.1.0.dist-info/top_level.txt").decode().split()) == [
            "milsil",
            "milsil_server",
        ]
    bundle = qs.find_bundle(unpacked / "milsil")
    assert bundle.scripts == unpacked / "milsil" / "qupath_scripts"
    assert {p.name for p in bundle.script_files()} == {
        p.name for p in (ROOT / "qupath_scripts").glob("*.groovy")
    }
    assert {p.name for p in bundle.lib_files()} == {
        p.name for p in (ROOT / "qupath_scripts" / "lib").glob("*.groovy")
    }
    assert bundle.descriptor.read_bytes() == (ROOT / "proto" / "milsil_v1.desc").read_bytes()
    assert not (unpacked / "milsil" / "qupath_scripts" / "tools").exists()
