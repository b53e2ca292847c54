"""One exception hierarchy: every error class imagejepa defines has one name and one place in it,
and the command line turns each kind into its exit code with one line."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import imagejepa
from imagejepa import cli, errors


def defined_exceptions() -> list[type]:
    found = set()
    for info in pkgutil.walk_packages(imagejepa.__path__, "imagejepa."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseException) \
                    and value.__module__.startswith("imagejepa"):
                found.add(value)
    return sorted(found, key=lambda c: (c.__module__, c.__name__))


def test_every_error_class_belongs_to_the_hierarchy_under_one_name():
    classes = defined_exceptions()
    assert errors.CheckpointError in classes and errors.UnreadableFileError in classes
    outside = [f"{c.__module__}.{c.__name__}" for c in classes if not issubclass(c, errors.ImageJepaError)]
    assert not outside
    names = [c.__name__ for c in classes]
    assert len(names) == len(set(names)), f"two classes share a name: {names}"


@pytest.mark.parametrize("error, code", [
    (errors.ConfigError("model.arch: unknown 'x'"), 2),
    (errors.UnsafeFileError("refusing to load f"), 2),
    (errors.EvalError("bad protocol"), 2),
    (errors.CheckpointError("f: sha256 mismatch"), 1),
    (errors.DataError("too many unreadable files"), 1),
    (errors.NonFiniteError("non-finite loss at step 3"), 1),
])
def test_each_kind_of_error_has_its_exit_code_and_one_line(monkeypatch, capsys, error, code):
    def fails(args):
        raise error

    monkeypatch.setitem(cli.COMMANDS, "info", fails)
    assert cli.main(["info", "vit_tiny"]) == code
    err = capsys.readouterr().err
    assert err == f"imagejepa info: error: {error}\n"
