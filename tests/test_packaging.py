"""The conda environment and pyproject.toml must describe the same dependencies."""
import re
import sys
from pathlib import Path

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def _split(requirement: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", requirement)
    assert match, f"cannot parse requirement {requirement!r}"
    return match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_environment_matches_pyproject():
    project = _pyproject()["project"]
    extras = project["optional-dependencies"]
    def requirements(extra: str) -> list[str]:  # an extra may pull another: "mambaad-companion[export]"
        own = f"{project['name']}["
        return [r for requirement in extras[extra]
                for r in (requirements(requirement[len(own):-1]) if requirement.startswith(own) else [requirement])]

    expected = dict(_split(r) for r in project["dependencies"] + requirements("book") + requirements("dev"))

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = dict(_split(r) for r in pip_section if not r.startswith("-e"))
    assert listed == expected
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python.removeprefix("python") == project["requires-python"]


def test_torch_ranges_admit_both_machines():
    """This machine has torch 2.14 / torchvision 0.29; the lent GPU machine torch 2.11 / 0.26."""
    from packaging.specifiers import SpecifierSet

    pins = dict(_split(r) for r in _pyproject()["project"]["dependencies"])
    for name, versions in (("torch", ("2.11.0", "2.14.1")), ("torchvision", ("0.26.0", "0.29.1"))):
        spec = SpecifierSet(pins[name])
        for version in versions:
            assert version in spec, f"{name} {pins[name]} rejects {version}"
    assert "3.12" in SpecifierSet(_pyproject()["project"]["requires-python"]) and "3.11" in SpecifierSet(
        _pyproject()["project"]["requires-python"])


def test_cuda_extra_is_pinned_and_never_imported_at_import_time():
    cuda = _pyproject()["project"]["optional-dependencies"]["cuda"]
    assert {_split(r)[0] for r in cuda} == {"mamba-ssm", "causal-conv1d"}
    assert all(_split(r)[1].startswith("==") for r in cuda)
    offenders = [
        str(path.relative_to(ROOT)) for path in (ROOT / "mambaad_lib").rglob("*.py")
        if re.search(r"^(import|from)\s+(mamba_ssm|selective_scan_cuda|causal_conv1d)", path.read_text(), re.M)
    ]
    assert offenders == []


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.+?)\n```", readme)
    test_command = next(c for c in commands if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()
