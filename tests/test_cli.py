"""The command line: a version, and help text for every option of every command."""

from __future__ import annotations

import argparse
from importlib.metadata import version

import pytest

from fewstep.cli import main, parser
from tests.conftest import study_of


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"fewstep {version('fewstep')}\n"


def test_every_command_and_option_has_help():
    root = parser()
    (commands,) = [a for a in root._actions if isinstance(a, argparse._SubParsersAction)]
    helped = {choice.dest: choice.help for choice in commands._choices_actions}
    assert set(helped) == set(commands.choices) and all(helped.values())
    missing = [
        f"{name} {action.option_strings[0]}"
        for name, sub in commands.choices.items()
        for action in sub._actions
        if action.option_strings and action.help in (None, "", argparse.SUPPRESS)
    ]
    assert missing == []


def test_snakemake_configfiles_are_found_in_every_spelling():
    from fewstep.cli import snakemake_configfiles

    argv = ["-n", "--configfile", "a.yaml", "b.yaml", "--cores", "2", "--configfiles=c.yaml", "all"]
    assert snakemake_configfiles(argv) == ["a.yaml", "b.yaml", "c.yaml"]
    assert snakemake_configfiles(["--cores", "all"]) == []


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (None, "config file {path} does not exist; pass an existing --configfile"),
        ("sweep: x\nprompts: [a\n  b: c\n", "config file {path} line 3 is not valid YAML; fix its syntax"),
    ],
)
def test_fewstep_snakemake_names_a_bad_configfile_in_one_line(tmp_path, capsys, monkeypatch, text, line):
    """Snakemake itself answers with a traceback or a line without file and line; nothing runs."""
    import os

    path = tmp_path / "my config.yaml"
    if text is not None:
        path.write_text(text)
    monkeypatch.setattr(os, "execv", lambda *a: pytest.fail("snakemake must not start"))
    assert main(["snakemake", "-n", "--configfile", str(path)]) == 1
    assert capsys.readouterr().err == f"fewstep snakemake: error: {line.format(path=path)}\n"


def test_fewstep_snakemake_runs_snakemake_with_the_arguments_unchanged(monkeypatch):
    import os
    import sys

    from tests.conftest import REPO

    started = []
    monkeypatch.setattr(os, "execv", lambda exe, argv: started.append((exe, argv)))
    args = ["-n", "--configfile", str(REPO / "config" / "demo.yaml"), "--cores", "1"]
    assert main(["snakemake", *args]) == 0
    assert started == [(sys.executable, [sys.executable, "-m", "snakemake", *args])]


def test_validate_lists_every_cell_with_its_items(capsys):
    """`fewstep validate` keeps the README's promise: each cell with the items it crosses."""
    from fewstep.core.config import load
    from fewstep.grid import Grid
    from tests.conftest import REPO

    demo = REPO / "config" / "demo.yaml"
    assert main(["validate", "--config", str(demo)]) == 0
    lines = capsys.readouterr().out.splitlines()
    grid = Grid(study_of(load([demo])))
    images = sum(len(grid.items_of(cell)) for cell in grid.cells)
    assert images == 58  # the README's count
    assert lines[0] == f"demo: {len(grid.cells)} cells, {images} images, weights=tiny"
    assert all(
        line.startswith(f"  {cell.id}: {len(grid.items_of(cell))} item")  # "1 item (", "4 items ("
        for line, cell in zip(lines[1:], grid.cells, strict=True)
    )
    assert "  flux-dev/infusenet-aes/8: 4 items (2 identities x 2 prompts x 1 seed)" in lines
    assert "  sdxl/sd-object/4: 1 item (1 reference x 1 prompt x 1 seed)" in lines  # its role's prompt
    assert "  kontext/kontext-photo/2: 4 items (2 identities x 2 prompts x 1 seed)" in lines
    assert "  sdxl/sd-faceid/2: 4 items (2 identities x 2 prompts x 1 seed)" in lines  # identity prompts
