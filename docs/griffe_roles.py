"""A griffe extension for the API page: Sphinx cross-reference roles in the docstrings
(``:class:`~a.b.C```, ``:func:`f```, ``:mod:`m```, ...) become Markdown code spans, so the
page shows ``C`` instead of the raw role. Named in mkdocs.yml; not part of the package."""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")


def _code(match: re.Match) -> str:
    short, target = match.group(1), match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class SphinxRolesAsCode(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            if obj.docstring is not None:
                obj.docstring.value = ROLE.sub(_code, obj.docstring.value)
            stack.extend(member for member in obj.members.values() if not member.is_alias)
