import tomllib

from conftest import REPO


def test_requirements_txt_lists_exactly_the_project_dependencies():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    listed = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert listed == declared


def test_readme_starts_with_the_two_setup_commands():
    head = "\n".join((REPO / "README.md").read_text().splitlines()[:15])
    assert "uv run python run_lr_finder.py --demo --output_dir ./outputs" in head
    assert "uv run pytest" in head
