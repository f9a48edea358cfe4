import re
import subprocess
import sys

from conftest import REPO


def test_readme_config_reference_matches_the_schema():
    readme = (REPO / "README.md").read_text()
    table = re.search(r"<!-- config-reference:start -->\n(.*?)<!-- config-reference:end -->", readme, re.S).group(1)
    generated = subprocess.run([sys.executable, str(REPO / "scripts/config_reference.py")], capture_output=True,
                               text=True, check=True).stdout
    assert table == generated


def test_readme_gives_the_install_and_test_commands_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci/run").read_text()
    assert 'pip install -e ".[cpu,dev]"' in readme and '-e ".[cpu,dev]"' in ci
    assert "\npytest " in readme and "python -m pytest" in ci
