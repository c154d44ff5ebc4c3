"""The wheel a user installs: one `recserve` namespace, complete, and working outside the source tree.

The wheel is built from a copy of the source files (no stale build/ directory can leak into it) and installed
without dependencies into a fresh virtualenv; only then is this environment's site-packages appended to the
new one's path, so that TensorFlow and grpc need not be installed twice. A path line in a .pth file adds a
directory without running the .pth files inside it, so the editable install's finder stays out: every
`recserve` module imported below comes from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import pytest

from recserve.server.frontend import native_available

REPO_ROOT = Path(__file__).resolve().parent.parent
# Each source folder and where its modules land in the namespace.
SOURCE_FOLDERS = {
    "server": "recserve/server",
    "client": "recserve/client",
    "training": "recserve/training",
    "native": "recserve/native",
    "protos/recserve": "recserve",
}


@dataclass(frozen=True)
class FreshEnvironment:
    """A virtualenv with only the wheel installed into it (and this environment's packages on its path)."""

    root: Path
    site_packages: Path
    landed: frozenset[str]
    """What installing the wheel added to site-packages."""

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def run(self, *argv: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
        """Run a command of the environment with nothing of the source tree on its path."""
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["TF_CPP_MIN_LOG_LEVEL"] = "2"
        return subprocess.run(
            [str(arg) for arg in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=180
        )


def copy_sources(destination: Path) -> None:
    """Copy the files git tracks or would track (not ignored) into `destination`."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = REPO_ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)


def pip(*argv: str | Path) -> None:
    """Run this environment's pip; on failure the test fails with pip's output."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"pip {' '.join(map(str, argv))} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> FreshEnvironment:
    work = tmp_path_factory.mktemp("packaging")
    copy_sources(work / "src")
    pip("wheel", "--no-deps", "--quiet", "--wheel-dir", work / "dist", work / "src")
    (wheel,) = (work / "dist").glob("recserve-*.whl")

    root = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", root], check=True, timeout=120)
    python = root / "bin" / "python"
    site_packages = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    before = set(os.listdir(site_packages))
    pip("--python", python, "install", "--no-deps", "--no-index", "--quiet", wheel)
    landed = frozenset(set(os.listdir(site_packages)) - before)

    (site_packages / "recserve_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return FreshEnvironment(root, site_packages, landed)


def test_only_the_recserve_namespace_lands_in_site_packages(fresh: FreshEnvironment) -> None:
    (dist_info,) = [name for name in fresh.landed if name.endswith(".dist-info")]
    assert dist_info.startswith("recserve-")
    assert fresh.landed == {"recserve", dist_info}


def test_every_source_module_is_in_the_wheel(fresh: FreshEnvironment) -> None:
    installed = fresh.site_packages
    missing = [
        f"{folder}/{module.relative_to(REPO_ROOT / folder)}"
        for folder, target in SOURCE_FOLDERS.items()
        for module in (REPO_ROOT / folder).rglob("*.py")
        if not (installed / target / module.relative_to(REPO_ROOT / folder)).is_file()
    ]
    assert not missing, f"modules missing from the wheel: {missing}"


def test_the_commented_descriptors_are_in_the_wheel(fresh: FreshEnvironment) -> None:
    # Server reflection answers with them (server/servicers/reflection.py); without, it fails at start.
    shipped = fresh.site_packages / "recserve" / "descriptors.binpb"
    assert shipped.read_bytes() == (REPO_ROOT / "protos" / "recserve" / "descriptors.binpb").read_bytes()


def test_native_extensions_are_inside_the_namespace(fresh: FreshEnvironment, tmp_path: Path) -> None:
    if not native_available():
        assert not os.environ.get("CI"), "under CI the grpc++ extensions must be built (libgrpc++-dev)"
        pytest.skip("grpc++ not installed here, so the wheel has no native extensions")
    built = sorted(
        path.name.split(".")[0] for path in (fresh.site_packages / "recserve" / "native").glob("_*.so")
    )
    assert built == ["_annoy_search", "_frontend", "_loadtest"]
    check = (
        "from recserve.server.frontend import native_available; "
        "from recserve.client.loadtest.runner import native_transport_available; "
        "from recserve.server.runtime import ann_index; "
        "assert native_available() and native_transport_available()"
    )
    done = fresh.run(fresh.python, "-c", check, cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_client_import_works_from_the_wheel(
    fresh: FreshEnvironment, tmp_path: Path, server_address: str
) -> None:
    script = (
        "import recserve\n"
        "from recserve.client import RecommenderClient\n"
        "print(recserve.__file__)\n"
        f"with RecommenderClient({server_address!r}) as client:\n"
        "    print(len(client.recommend('user-3', k=4).items))\n"
    )
    done = fresh.run(fresh.python, "-c", script, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    module_file, count = done.stdout.split()
    assert Path(module_file).is_relative_to(fresh.site_packages)
    assert count == "4"


@pytest.mark.parametrize("command", [["bin/recserve"], ["bin/python", "-m", "recserve"]])
def test_console_script_works_from_the_wheel(
    fresh: FreshEnvironment, tmp_path: Path, server_address: str, command: list[str]
) -> None:
    argv = [fresh.root / command[0], *command[1:]]
    assert fresh.run(*argv, "--help", cwd=tmp_path).returncode == 0
    done = fresh.run(
        *argv, "recommend", "--user", "user-3", "-k", "3", "--json", "--target", server_address, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["items"]) == 3
