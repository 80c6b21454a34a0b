"""The README's Python examples run as written."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, capsys):
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), {})
    if "evaluate(model, valid)" in BLOCKS[index]:
        printed = capsys.readouterr().out
        auc = float(re.search(r"'auc': (?:np\.float64\()?([0-9.]+)", printed).group(1))
        assert auc > 0.6  # the synthetic log's planted model scores ~0.8


def test_readme_shows_the_two_setup_commands():
    text = README.read_text()
    assert "pip install -e . && python scripts/train.py" in text
    assert "pip install -e '.[test]' && python -m pytest" in text
