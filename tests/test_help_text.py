"""--help says each flag's default once, as the user gets it."""

import re

import pytest

from conftest import run_cli


def flag_blocks(help_text: str) -> dict[str, str]:
    """Each option's help, joined onto one line, keyed by its flag."""
    blocks, current = {}, None
    for line in help_text.splitlines():
        match = re.match(r"  (-\w|--\w+)", line)
        if match:
            current = match.group(1)
            blocks[current] = line
        elif current and line.startswith("    "):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return {flag: " ".join(text.split()) for flag, text in blocks.items()}


@pytest.mark.parametrize("script", ["main.py", "run_lr_finder.py", "prepare_imagenet.py"])
def test_help_says_each_default_once(script):
    proc = run_cli(script, "--help", timeout=60)
    assert proc.returncode == 0
    blocks = flag_blocks(proc.stdout)
    assert len(blocks) >= 5
    for flag, text in blocks.items():
        assert text.lower().count("default") <= 1, text
        assert "(default: None)" not in text and "(default: False)" not in text, text
    if script != "prepare_imagenet.py":
        assert blocks["--input_size"].endswith("(default: 224 for imagenet1k, 32 for cifar100/digits)")
        assert blocks["--val_labels"].endswith("(default: searched in --data_dir and up to 3 folders above, "
                                               "else wnids in the file names)")
        assert blocks["--lr_start"].endswith("(default: 1e-07)")
        assert blocks["--find_lr"].endswith("(default: off)")
        assert blocks["--max_samples"].endswith("(default: all)")
