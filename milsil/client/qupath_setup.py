"""``milsil qupath install``: set up QuPath 0.6 for the milsil scripts in one command.

Three things go into QuPath's user directory:

* the grpc-java jar set of :data:`JARS` (the one list; ``qupath_scripts/README.md`` shows
  it and ``tests/test_qupath_install.py`` checks the two agree) into ``<user dir>/extensions``,
  each from Maven Central (or ``--maven-url``) and checked against the strongest checksum
  published beside it (``.sha512``, else ``.sha256``, else ``.sha1``), or from a local
  folder (``--from``, checked against checksum files beside the jars when there are any);
* the scripts, their ``lib/`` and the descriptor set ``milsil_v1.desc`` into
  ``<user dir>/scripts/milsil``, where QuPath lists them under Automate > User scripts...
  and where the scripts' own lookup finds ``lib/`` (beside the running script) and the
  descriptor (``milsil_v1.desc`` in that folder, see ``MilsilClient.findDescriptor``).

Every file is written atomically (:mod:`milsil.atomic`): a refused or broken download
leaves nothing behind. A verified jar gets its checksum written beside it, Maven's way
(``grpc-api-1.69.1.jar.sha1``), so a rerun checks what is there without the network and
skips it. Plain Python; no gRPC, no torch.
"""

from __future__ import annotations

import hashlib
import http.client
import re
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from milsil.atomic import atomic_write, atomic_write_bytes
from milsil.errors import MilsilError, NotFoundError, UnavailableHereError

MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
QUPATH_VERSION = "v0.6"
DESCRIPTOR_NAME = "milsil_v1.desc"
SCRIPTS_FOLDER = "milsil"  # <user dir>/scripts/milsil
# Strongest first. Maven Central serves .sha1 (and .md5) for every file; .sha256/.sha512
# only where the publisher uploaded them (Gradle builds do). MD5 is not accepted.
CHECKSUMS = ("sha512", "sha256", "sha1")
_HEX_LENGTH = {"sha512": 128, "sha256": 64, "sha1": 40}
MAX_JAR_BYTES = 128 << 20
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Jar:
    """One Maven artifact QuPath needs in its extensions folder."""

    group: str
    artifact: str
    version: str
    why: str

    @property
    def coordinates(self) -> str:
        return f"{self.group}:{self.artifact}:{self.version}"

    @property
    def filename(self) -> str:
        return f"{self.artifact}-{self.version}.jar"

    @property
    def maven_path(self) -> str:
        """Where a Maven repository keeps it: group/as/folders/artifact/version/file."""
        return f"{self.group.replace('.', '/')}/{self.artifact}/{self.version}/{self.filename}"

    def url(self, base: str) -> str:
        return f"{base.rstrip('/')}/{self.maven_path}"


GRPC_VERSION = "1.69.1"
# THE jar set (grpc-java 1.69.1 and its own dependency versions). QuPath bundles Guava and
# Gson. qupath_scripts/README.md shows this table; tests/test_qupath_install.py checks it.
JARS: tuple[Jar, ...] = (
    Jar("io.grpc", "grpc-api", GRPC_VERSION, "gRPC API"),
    Jar("io.grpc", "grpc-context", GRPC_VERSION, "call context (runtime dependency of grpc-core)"),
    Jar("io.grpc", "grpc-core", GRPC_VERSION, "channel implementation"),
    Jar("io.grpc", "grpc-stub", GRPC_VERSION, "`ClientCalls`"),
    Jar("io.grpc", "grpc-util", GRPC_VERSION, "load balancers the transport loads at run time"),
    Jar(
        "io.grpc",
        "grpc-netty-shaded",
        GRPC_VERSION,
        "HTTP/2 transport with its own Netty (with ALPN, so TLS works)",
    ),
    Jar("com.google.protobuf", "protobuf-java", "3.25.5", "`DynamicMessage`, descriptors"),
    Jar("io.perfmark", "perfmark-api", "0.27.0", "used by grpc-core"),
)


# ------------------------------------------------------------------ where things go


def default_user_dir(home: Path | None = None) -> Path:
    """QuPath 0.6's default user directory: ``<user.home>/QuPath/v0.6``.

    From QuPath's source at v0.6.0: ``PathPrefs.getDefaultQuPathUserDirectory()`` returns
    ``Paths.get(System.getProperty("user.home"), "QuPath", String.format("v%d.%d", major,
    minor))`` (qupath-gui-fx/src/main/java/qupath/lib/gui/prefs/PathPrefs.java), i.e.
    ``~/QuPath/v0.6`` on Linux and macOS and ``%USERPROFILE%\\QuPath\\v0.6`` on Windows
    (Java's ``user.home``, which is also what :meth:`Path.home` reads there). QuPath uses
    it only once the user accepted it (the first Extensions > Manage extensions offers it);
    the folder in use is Edit > Preferences > Extensions > QuPath user directory.
    """
    return (home if home is not None else Path.home()) / "QuPath" / QUPATH_VERSION


def find_user_dir(given: Path | None, home: Path | None = None) -> Path:
    """``given`` (which must exist), else QuPath 0.6's default if it exists; else a clear error."""
    if given is not None:
        path = Path(given).expanduser()
        if not path.is_dir():
            raise NotFoundError(
                f"QuPath user directory {path} does not exist; pass the folder QuPath shows "
                "under Edit > Preferences > Extensions > QuPath user directory"
            )
        return path
    default = default_user_dir(home)
    if default.is_dir():
        return default
    others = sorted(p for p in default.parent.glob("v*") if p.is_dir())
    hint = (
        f"; other QuPath versions' folders here: {', '.join(str(p) for p in others)}"
        if others
        else "; QuPath 0.6 offers to create it the first time you open Extensions > Manage extensions"
    )
    raise NotFoundError(
        f"no QuPath 0.6 user directory at {default}: pass --qupath-user-dir DIR with the folder "
        f"QuPath shows under Edit > Preferences > Extensions > QuPath user directory{hint}"
    )


def extensions_dir(user_dir: Path) -> Path:
    """``<user dir>/extensions``: QuPath 0.6's ``UserDirectoryManager.DIR_EXTENSIONS``.

    QuPath 0.6 (extension manager 1.0.0, ``ExtensionFolderManager``) loads every ``.jar``
    in that folder and its sub-folders, except ``catalogs/`` (the catalog-managed
    extensions); QuPath 0.5's ``ExtensionClassLoader`` only the top level. Plain jars go
    to the top level, which both load.
    """
    return user_dir / "extensions"


def scripts_dir(user_dir: Path) -> Path:
    """``<user dir>/scripts/milsil``: under QuPath 0.6's ``UserDirectoryManager.DIR_SCRIPTS``,
    which the Automate > User scripts... menu lists (sub-folders as sub-menus)."""
    return user_dir / "scripts" / SCRIPTS_FOLDER


@dataclass(frozen=True)
class Bundle:
    """The Groovy scripts folder (with ``lib/``) and the descriptor set to install."""

    scripts: Path
    descriptor: Path

    def script_files(self) -> list[Path]:
        return sorted(self.scripts.glob("*.groovy"))

    def lib_files(self) -> list[Path]:
        return sorted((self.scripts / "lib").glob("*.groovy"))


def find_bundle(package_dir: Path | None = None) -> Bundle:
    """The scripts and descriptor of this milsil: in an installed wheel beside the package
    (``milsil/qupath_scripts``, ``milsil/proto``: pyproject's package data), else in the
    repository checkout the package runs from (``qupath_scripts/``, ``proto/``)."""
    base = package_dir if package_dir is not None else Path(__file__).resolve().parents[1]
    tried = []
    for root in (base, base.parent):
        bundle = Bundle(root / "qupath_scripts", root / "proto" / DESCRIPTOR_NAME)
        if (bundle.scripts / "lib" / "MilsilBootstrap.groovy").is_file() and (
            bundle.descriptor.is_file()
        ):
            return bundle
        tried.append(str(bundle.scripts))
    raise UnavailableHereError(
        f"this milsil has no QuPath scripts (looked in {', '.join(tried)}); install milsil "
        "from its wheel or run it from a checkout of the repository"
    )


# ------------------------------------------------------------------ checksums


def _parse_checksum(text: str, algo: str, where: str) -> str:
    """The hex digest of a Maven checksum file (``HEX`` or ``HEX  filename``)."""
    words = text.split()
    value = words[0].lower() if words else ""
    if len(value) != _HEX_LENGTH[algo] or not re.fullmatch(r"[0-9a-f]+", value):
        raise MilsilError(f"{where} is not a {algo} checksum file (it reads {text[:60]!r})")
    return value


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _checksum_beside(path: Path) -> tuple[str, str] | None:
    """(algo, hex) of the strongest checksum file beside ``path`` (``path.sha512`` ...)."""
    for algo in CHECKSUMS:
        side = path.with_name(f"{path.name}.{algo}")
        if side.is_file():
            return algo, _parse_checksum(side.read_text(errors="replace"), algo, str(side))
    return None


def _record_checksum(jar_path: Path, algo: str, value: str) -> None:
    """Write ``jar.<algo>`` beside an installed jar, dropping other (stale) checksum files."""
    for other in CHECKSUMS:
        if other != algo:
            jar_path.with_name(f"{jar_path.name}.{other}").unlink(missing_ok=True)
    atomic_write_bytes(jar_path.with_name(f"{jar_path.name}.{algo}"), f"{value}\n".encode())


def _forget_checksum(jar_path: Path) -> None:
    for algo in CHECKSUMS:
        jar_path.with_name(f"{jar_path.name}.{algo}").unlink(missing_ok=True)


def _checked_copy(
    read: Iterator[bytes], algo: str, expected: str | None, what: str
) -> Callable[[IO[bytes]], None]:
    """A writer for :func:`atomic_write` that hashes while copying and raises on a mismatch
    before the rename (``what`` names the jar and its source in the error)."""

    def write(fh: IO[bytes]) -> None:
        h = hashlib.new(algo)
        size = 0
        for block in read:
            size += len(block)
            if size > MAX_JAR_BYTES:
                raise MilsilError(f"{what} is larger than {MAX_JAR_BYTES >> 20} MiB; refused")
            h.update(block)
            fh.write(block)
        actual = h.hexdigest()
        if expected is not None and actual != expected:
            raise MilsilError(
                f"{what} fails its checksum: expected {algo} {expected}, got {actual}; "
                "nothing was installed for it"
            )

    return write


# ------------------------------------------------------------------ the network

_NETWORK_ERRORS = (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException)


class _Missing(Exception):
    """HTTP 404 (or 410): the repository has no such file."""


def _offline(url: str, exc: BaseException, timeout: float) -> UnavailableHereError:
    reason = getattr(exc, "reason", None) or exc
    if isinstance(reason, TimeoutError):
        reason = f"no answer within {timeout:g} s"
    return UnavailableHereError(
        f"cannot download {url} ({reason or type(exc).__name__}); offline? download the jars "
        "listed in qupath_scripts/README.md elsewhere and run: milsil qupath install --from JAR_DIR"
    )


def _open(url: str, timeout: float, method: str = "GET"):
    request = urllib.request.Request(url, method=method, headers={"User-Agent": "milsil"})
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) only
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code in (404, 410):
            raise _Missing(url) from None
        raise MilsilError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except _NETWORK_ERRORS as exc:
        raise _offline(url, exc, timeout) from None


def _chunks(response, url: str, timeout: float) -> Iterator[bytes]:
    with response:
        while True:
            try:
                block = response.read(_CHUNK)
            except _NETWORK_ERRORS as exc:
                raise _offline(url, exc, timeout) from None
            if not block:
                return
            yield block


def _read_small(url: str, timeout: float) -> str:
    return b"".join(_chunks(_open(url, timeout), url, timeout)).decode("ascii", "replace")


def published_checksum(jar: Jar, base: str, timeout: float) -> tuple[str, str]:
    """(algo, hex) of the strongest checksum the repository publishes beside the jar."""
    url = jar.url(base)
    for algo in CHECKSUMS:
        try:
            text = _read_small(f"{url}.{algo}", timeout)
        except _Missing:
            continue
        return algo, _parse_checksum(text, algo, f"{url}.{algo}")
    try:  # no checksum at all: is the jar itself there?
        _open(url, timeout, method="HEAD").close()
    except _Missing:
        raise NotFoundError(
            f"{jar.coordinates} not found: {url} (HTTP 404); is {base} a Maven repository "
            "(--maven-url) that holds it?"
        ) from None
    raise MilsilError(
        f"{jar.filename} at {url} has no .sha512, .sha256 or .sha1 file beside it; refusing an "
        "unchecked jar (check it yourself and use --from JAR_DIR)"
    )


# ------------------------------------------------------------------ installing


@dataclass
class Report:
    """What an install did (for the summary and the tests)."""

    user_dir: Path
    installed: list[str] = field(default_factory=list)  # jar file names written
    kept: list[str] = field(default_factory=list)  # jar file names already there, checked
    unchecked: list[str] = field(default_factory=list)  # --from jars without checksum files
    copied: list[str] = field(default_factory=list)  # script files written (relative)
    backups: list[str] = field(default_factory=list)  # user-edited scripts set aside
    notes: list[str] = field(default_factory=list)


def _other_versions(ext: Path, jar: Jar) -> list[str]:
    """Jars of the same artifact but another version in the extensions folder."""
    pattern = re.compile(rf"{re.escape(jar.artifact)}(-\d[^/\\]*)?\.jar", re.IGNORECASE)
    if not ext.is_dir():
        return []
    return sorted(
        p.name for p in ext.iterdir() if pattern.fullmatch(p.name) and p.name != jar.filename
    )


def _installed_and_intact(target: Path) -> tuple[str, str] | None:
    """(algo, hex) if ``target`` exists and matches the checksum recorded beside it."""
    if not target.is_file():
        return None
    recorded = _checksum_beside(target)
    if recorded is None:
        return None
    algo, value = recorded
    return recorded if _digest(target, algo) == value else None


def _download_jar(jar: Jar, ext: Path, base: str, timeout: float, report: Report, say) -> None:
    target = ext / jar.filename
    recorded = _installed_and_intact(target)
    if recorded is not None:
        report.kept.append(jar.filename)
        say(f"  {jar.filename}: already there ({recorded[0]} checked)")
        return
    algo, expected = published_checksum(jar, base, timeout)
    if target.is_file():
        if _digest(target, algo) == expected:
            _record_checksum(target, algo, expected)
            report.kept.append(jar.filename)
            say(f"  {jar.filename}: already there ({algo} checked against {base})")
            return
        say(f"  {jar.filename}: the copy there does not match its {algo}; replacing it")
    url = jar.url(base)
    say(f"  {jar.filename}: downloading {url}")
    try:
        response = _open(url, timeout)
    except _Missing:
        raise NotFoundError(
            f"{jar.coordinates} not found: {url} (HTTP 404, though its checksum is there)"
        ) from None
    chunks = _chunks(response, url, timeout)
    try:
        write = _checked_copy(chunks, algo, expected, f"{jar.filename} from {url}")
        _guarded(lambda: atomic_write(target, write), target)
    finally:
        chunks.close()
        response.close()
    _record_checksum(target, algo, expected)
    report.installed.append(jar.filename)
    say(f"  {jar.filename}: {algo} {expected[:16]}... checked, installed")


def _source_in(folder: Path, jar: Jar) -> Path | None:
    """The jar in a local folder: flat (``grpc-api-1.69.1.jar``) or Maven's layout."""
    for candidate in (folder / jar.filename, folder / jar.maven_path):
        if candidate.is_file():
            return candidate
    return None


def _check_local_jars(folder: Path) -> dict[Jar, tuple[Path, tuple[str, str] | None]]:
    """Every jar of :data:`JARS` in ``folder``, checked against checksum files beside it;
    refuses (before anything is copied) a folder that lacks one or holds a bad one."""
    if not folder.is_dir():
        raise NotFoundError(f"--from {folder}: no such folder")
    found: dict[Jar, tuple[Path, tuple[str, str] | None]] = {}
    missing = []
    for jar in JARS:
        source = _source_in(folder, jar)
        if source is None:
            others = _other_versions(folder, jar)
            missing.append(
                f"{jar.filename} ({jar.coordinates}"
                + (f"; found {', '.join(others)}: another version" if others else "")
                + ")"
            )
            continue
        found[jar] = (source, None)
    if missing:
        raise NotFoundError(
            f"--from {folder} lacks {len(missing)} of the {len(JARS)} jars: {'; '.join(missing)}; "
            "the set (exact versions) is listed in qupath_scripts/README.md"
        )
    for jar, (source, _) in found.items():
        if not zipfile.is_zipfile(source):
            raise MilsilError(f"{source} is not a jar (zip) file")
        beside = _checksum_beside(source)
        if beside is not None:
            algo, expected = beside
            actual = _digest(source, algo)
            if actual != expected:
                raise MilsilError(
                    f"{jar.filename} from {source} fails its checksum: expected {algo} "
                    f"{expected} (from {source.name}.{algo}), got {actual}; nothing was installed"
                )
        found[jar] = (source, beside)
    return found


def _copy_jar(jar: Jar, source: Path, beside, ext: Path, report: Report, say) -> None:
    target = ext / jar.filename
    if target.is_file() and _digest(target, "sha256") == _digest(source, "sha256"):
        if beside is not None:
            _record_checksum(target, *beside)
        report.kept.append(jar.filename)
        say(f"  {jar.filename}: already there (same as {source})")
        return
    algo, expected = beside if beside is not None else ("sha256", None)

    def read() -> Iterator[bytes]:
        with source.open("rb") as fh:
            yield from iter(lambda: fh.read(_CHUNK), b"")

    write = _checked_copy(read(), algo, expected, f"{jar.filename} from {source}")
    _guarded(lambda: atomic_write(target, write), target)
    if beside is not None:
        _record_checksum(target, algo, expected)
        say(f"  {jar.filename}: {algo} checked ({source.name}.{algo}), installed from {source}")
    else:
        _forget_checksum(target)
        report.unchecked.append(jar.filename)
        say(f"  {jar.filename}: installed from {source} (no checksum file beside it: unchecked)")
    report.installed.append(jar.filename)


def _guarded(action: Callable[[], object], path: Path) -> object:
    """Run a file operation; a disk error becomes one line naming the file."""
    try:
        return action()
    except MilsilError:
        raise
    except OSError as exc:
        hint = "; close QuPath if it runs, and check the folder's permissions"
        hint = hint if isinstance(exc, PermissionError) else ""
        raise MilsilError(f"cannot write {path}: {exc.strerror or exc}{hint}") from None


def _backup_name(path: Path) -> Path:
    for k in range(1, 1000):
        candidate = path.with_name(f"{path.name}.bak" if k == 1 else f"{path.name}.bak{k}")
        if not candidate.exists():
            return candidate
    raise MilsilError(f"too many backups of {path}; remove some")


def _copy_scripts(bundle: Bundle, dest: Path, report: Report, say) -> None:
    """Scripts, lib/ and the descriptor into ``dest``; a script the user changed (its
    settings block) is set aside as ``<name>.bak`` before the new one replaces it."""
    plan = [(p, dest / p.name, True) for p in bundle.script_files()]
    plan += [(p, dest / "lib" / p.name, False) for p in bundle.lib_files()]
    plan.append((bundle.descriptor, dest / DESCRIPTOR_NAME, False))
    for source, target, user_editable in plan:
        rel = target.relative_to(dest).as_posix()
        data = source.read_bytes()
        if target.is_file():
            if target.read_bytes() == data:
                continue
            if user_editable:
                backup = _backup_name(target)
                _guarded(lambda t=target, b=backup: shutil.copy2(t, b), backup)
                report.backups.append(backup.name)
                say(f"  {rel}: differs from this milsil's copy; yours is kept as {backup.name}")
        _guarded(lambda t=target, d=data: atomic_write_bytes(t, d), target)
        report.copied.append(rel)


def install(
    user_dir: Path | None = None,
    jar_dir: Path | None = None,
    maven_url: str = MAVEN_CENTRAL,
    timeout: float = 60.0,
    say: Callable[[str], None] = print,
    home: Path | None = None,
    bundle: Bundle | None = None,
) -> Report:
    """Put the jars, scripts, lib/ and descriptor into QuPath's user directory."""
    if timeout <= 0:
        raise MilsilError(f"--timeout must be > 0 seconds, got {timeout:g}")
    if jar_dir is None and not re.match(r"https?://[^/]", maven_url):
        raise MilsilError(f"--maven-url must be an http(s) URL, got {maven_url!r}")
    user = find_user_dir(user_dir, home)
    bundle = bundle or find_bundle()
    local = _check_local_jars(Path(jar_dir).expanduser()) if jar_dir is not None else None
    ext = extensions_dir(user)
    _guarded(lambda: ext.mkdir(exist_ok=True), ext)
    report = Report(user_dir=user)
    source = f"--from {jar_dir}" if local is not None else maven_url
    say(f"milsil: QuPath user directory {user}")
    say(f"jars -> {ext} (from {source})")
    for jar in JARS:
        if local is not None:
            _copy_jar(jar, *local[jar], ext, report, say)
        else:
            _download_jar(jar, ext, maven_url, timeout, report, say)
        for other in _other_versions(ext, jar):
            report.notes.append(
                f"{ext / other} is another version of {jar.group}:{jar.artifact}: remove it "
                "(two versions on QuPath's class path can clash)"
            )
    dest = scripts_dir(user)
    say(f"scripts -> {dest}")
    _copy_scripts(bundle, dest, report, say)
    if not report.copied:
        say("  all there already")
    else:
        say(f"  {len(report.copied)} file(s) written: {', '.join(report.copied)}")
    for note in report.notes:
        say(f"note: {note}")
    say(next_steps(user, bundle))
    return report


def next_steps(user: Path, bundle: Bundle) -> str:
    names = ", ".join(p.stem.replace("_", " ") for p in bundle.script_files())
    return "\n".join(
        [
            "Next:",
            f"  1. Restart QuPath 0.6: it loads the jars in {extensions_dir(user)} when it starts. It must",
            f"     use {user} as its user directory (Edit > Preferences > Extensions > QuPath user directory).",
            '  2. Start the server: milsil serve --port 50051 --token "$MILSIL_TOKEN"',
            f"  3. In QuPath: Automate > User scripts... > {SCRIPTS_FOLDER} > one of: {names}.",
            "     In its settings block set server = 'host:port' (default localhost:50051) and the token",
            "     ('' reads QuPath's MILSIL_TOKEN environment variable), or for every script at once:",
            "     -Dmilsil.server=host:port in QuPath's .cfg file. Then Run.",
            "  Details and every error line: qupath_scripts/README.md in the milsil repository.",
        ]
    )
