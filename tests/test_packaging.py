"""Installing choreo installs one package, `choreo`: the repository's bus/, workers/ and config/
folders are mapped into it by pyproject.toml (choreo.bus, …), never installed as top-level
packages that would shadow, or be shadowed by, a user's own `config.py`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "choreo", "bus", "scheduling", "workers", "config", "benchmarks")


def test_a_wheel_in_a_fresh_venv_imports_only_choreo_and_runs_beside_a_users_config(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:        # built from a copy: the checkout gets no build/ or egg-info
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(
            ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                        if (ROOT / name).is_dir() else {}))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(src)], check=True, capture_output=True)
    [wheel] = wheels.glob("choreo-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    str(wheel)], check=True, capture_output=True)
    # choreo's dependencies from the test environment; a path added by a .pth runs no .pth of its
    # own, so the checkout's editable install (a .pth there) does not come along.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    top = sorted(p.name for p in site.iterdir() if p.is_dir() and not p.name.endswith(".dist-info"))
    assert top == ["choreo"]
    assert (venv / "bin" / "choreo").exists()

    user = tmp_path / "project"
    user.mkdir()
    (user / "choreo.config.py").write_text("raise SystemExit('the user config was imported')\n")
    (user / "choreo.bus.py").write_text("raise SystemExit('the user bus was imported')\n")
    done = subprocess.run([str(python), "-m", "choreo", "topology"], cwd=user, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "inventory" in done.stdout and "events:OrderCreated" in done.stdout
    for name in ("workers", "config", "benchmarks"):
        probe = subprocess.run([str(python), "-c", f"import {name}"], cwd=tmp_path, capture_output=True, text=True)
        assert probe.returncode != 0 and "No module named" in probe.stderr
    where = subprocess.run([str(python), "-c", "import choreo.bus, choreo.workers; print(choreo.bus.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site))
