"""Find and run the Groovy runtimes the QuPath-script tests use.

Two runtimes: Debian's Groovy 2.4 (`groovy` on PATH, from the `groovy` package, what CI
installs) and QuPath 0.6's Groovy 4.0.26 (a jar fetched by ``fetch_groovy4.sh``), both on
the JVM with Debian's grpc-java, protobuf-java, netty, guava, perfmark and gson jars from
``/usr/share/java``. Used by tests/test_groovy_*.py and tests/test_qupath_*.py.

When something is missing the tests skip locally but FAIL when the environment variable
``CI`` is set: CI must prove the QuPath scripts work, never silently pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

QUPATH_SCRIPTS = Path(__file__).resolve().parent.parent
REPO = QUPATH_SCRIPTS.parent
JAVA_DIR = Path(os.environ.get("MILSIL_JAVA_DIR", "/usr/share/java"))
GROOVY4_VERSION = "4.0.26"

# Debian package -> jar names (without .jar) under /usr/share/java; the grpc-java set a
# QuPath user copies into the extensions folder, minus what QuPath bundles (guava, gson).
JARS = (
    "grpc-api",
    "grpc-context",
    "grpc-core",
    "grpc-stub",
    "grpc-netty",
    "protobuf",
    "perfmark-api",
    "guava",
    "gson",
    "netty-buffer",
    "netty-codec",
    "netty-codec-http",
    "netty-codec-http2",
    "netty-codec-socks",
    "netty-common",
    "netty-handler",
    "netty-handler-proxy",
    "netty-resolver",
    "netty-transport",
)
INSTALL_HINT = (
    "run qupath_scripts/tools/install_deps.sh (Debian: groovy libgrpc-java libprotobuf-java "
    "libnetty-java libguava-java libperfmark-java libgoogle-gson-java)"
)
GROOVY4_HINT = "run qupath_scripts/tools/fetch_groovy4.sh (or set MILSIL_GROOVY4_JAR)"


def missing(reason: str) -> None:
    """Skip locally; fail in CI (env CI set), where skipping would hide a broken set-up."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


def java_home() -> str | None:
    """A JAVA_HOME Debian's `groovy` launcher accepts (it does not find java by itself)."""
    for candidate in (os.environ.get("JAVA_HOME"), "/usr/lib/jvm/java-17-openjdk-amd64"):
        if candidate and Path(candidate, "bin", "java").is_file():
            return candidate
    java = shutil.which("java")
    if java:
        return str(Path(java).resolve().parent.parent)
    return None


def classpath() -> str:
    """The Debian jars, or a skip/fail naming the missing ones."""
    jars = [JAVA_DIR / f"{name}.jar" for name in JARS]
    absent = [j.name for j in jars if not j.is_file()]
    if absent:
        missing(f"jars not found in {JAVA_DIR}: {', '.join(absent)}; {INSTALL_HINT}")
    return os.pathsep.join(str(j) for j in jars)


def groovy4_jar() -> Path | None:
    env = os.environ.get("MILSIL_GROOVY4_JAR")
    candidates = [Path(env)] if env else []
    cache = os.environ.get("MILSIL_GROOVY4_DIR") or str(Path.home() / ".cache/milsil/groovy4")
    candidates.append(Path(cache) / f"groovy-{GROOVY4_VERSION}.jar")
    return next((c for c in candidates if c.is_file()), None)


@dataclass(frozen=True)
class Runtime:
    """One way of running a Groovy script: a name for test ids and the command prefix."""

    name: str
    prefix: tuple[str, ...]
    env: dict[str, str]

    def command(
        self, script: Path, args: list[str], extra_cp: list[Path] | None = None
    ) -> list[str]:
        cp = os.pathsep.join([*(str(p) for p in extra_cp or []), classpath()])
        if self.prefix[0].endswith("groovy"):
            return [*self.prefix, "-cp", cp, str(script), *args]
        cmd = [*self.prefix[:1], "-cp", f"{self.prefix[1]}{os.pathsep}{cp}", *self.prefix[2:]]
        return [*cmd, str(script), *args]

    def run(
        self,
        script: Path,
        args: list[str],
        extra_cp: list[Path] | None = None,
        timeout: float = 240,
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(script, args, extra_cp),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            cwd=REPO,
        )

    def start(
        self, script: Path, args: list[str], log: Path, extra_cp: list[Path] | None = None
    ) -> subprocess.Popen:
        """Start without waiting (stdout and stderr to `log`), to run both runtimes at once."""
        with log.open("w") as handle:
            return subprocess.Popen(
                self.command(script, args, extra_cp),
                stdout=handle,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=REPO,
            )


# Short-lived JVMs: skip the optimizing JIT, use the simple collector (faster starts).
JVM_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xshare:auto"


def debian_groovy() -> Runtime:
    groovy = shutil.which("groovy")
    home = java_home()
    if not groovy or not home:
        missing(f"Debian's groovy (and a JDK) not found; {INSTALL_HINT}")
    env = dict(os.environ, JAVA_HOME=home, JAVA_OPTS=JVM_OPTS)
    return Runtime("groovy2.4", (groovy,), env)


def qupath_groovy4() -> Runtime:
    jar = groovy4_jar()
    home = java_home()
    if jar is None or not home:
        missing(f"Groovy {GROOVY4_VERSION} jar not found; {GROOVY4_HINT}")
    java = str(Path(home, "bin", "java"))
    return Runtime(
        "groovy4",
        (java, str(jar), *JVM_OPTS.split(), "groovy.ui.GroovyMain"),
        dict(os.environ, JAVA_HOME=home),
    )


RUNTIMES = {"groovy2.4": debian_groovy, "groovy4": qupath_groovy4}


def compile_stubs(out_dir: Path) -> Path:
    """javac the QuPath stand-ins (Java 8 bytecode: readable by Groovy 2.4 and 4)."""
    home = java_home()
    javac = Path(home, "bin", "javac") if home else None
    if javac is None or not javac.is_file():
        missing(f"javac not found (install openjdk-17-jdk-headless); {INSTALL_HINT}")
    sources = sorted(str(p) for p in (QUPATH_SCRIPTS / "tests" / "stubs").rglob("*.java"))
    out_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [str(javac), "-nowarn", "--release", "8", "-d", str(out_dir), "-cp", classpath(), *sources],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return out_dir


def available(name: str) -> Runtime | str:
    """The runtime, or why it is missing (for a later skip/fail in the test that needs it)."""
    try:
        return RUNTIMES[name]()
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        return str(exc)
