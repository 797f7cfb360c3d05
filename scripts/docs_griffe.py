"""Griffe extension for the docs site (mkdocs.yml, mkdocstrings ``extensions``).

snf_tf's docstrings are Google style with a few reStructuredText habits that Markdown would
render badly. This rewrites them for the site only (the source stays as it is):

- ``.. math::`` directives become fenced ``latex`` code blocks (the site loads no math JavaScript:
  it must work offline);
- Sphinx roles such as ``:class:`FlowLayer``` become plain inline code;
- ``>>>`` doctest lines become fenced ``pycon`` blocks (Markdown would read ``>`` as a quote);
- reStructuredText simple tables (``====  ====`` borders) become Markdown tables, or bullet lists
  when they have no header row.
"""

import re

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`~?([^`]+)`")
_BORDER = re.compile(r"^\s*=+(\s+=+)+\s*$")


def _indent(line):
    return len(line) - len(line.lstrip())


def _table(lines, base):
    """A reStructuredText simple table (its lines, borders included) as Markdown lines."""
    border = lines[0][base:]
    starts = [m.start() for m in re.finditer(r"=+", border)]
    borders = [k for k, line in enumerate(lines) if _BORDER.match(line)]
    header_end = borders[1] if len(borders) > 2 else None
    rows, header = [], []
    for k, line in enumerate(lines):
        if k in borders:
            if k == header_end:
                header, rows = rows, []
            continue
        text = line[base:]
        cells = [text[a:b].strip() for a, b in zip(starts, starts[1:] + [len(text)])]
        # A continuation line: blank first cell, or the previous first cell opened a literal.
        if rows and (not cells[0] or rows[-1][0].count("``") % 2):
            rows[-1] = [f"{old} {new}".strip() for old, new in zip(rows[-1], cells)]
        else:
            rows.append(cells)
    # Python-Markdown nests a list only at 4 spaces: a table inside a list item (indented by 2)
    # becomes a nested list.
    pad = " " * (-(-base // 4) * 4 if not header else base)
    if not header:
        return [f"{pad}- {row[0]}: {' '.join(row[1:])}" for row in rows] + [""]
    out = ["", pad + "| " + " | ".join(header[0]) + " |", pad + "|---" * len(starts) + "|"]
    return out + [pad + "| " + " | ".join(row) + " |" for row in rows] + [""]


def _rewrite(text):
    lines = _ROLE.sub(r"`\1`", text).split("\n")
    out = []
    fenced = False
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            fenced = not fenced
        if fenced or stripped.startswith("```"):
            out.append(line)
            i += 1
            continue
        if stripped == ".. math::":
            base = _indent(line)
            block = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            body = [b for b in block if b.strip()]
            cut = min((_indent(b) for b in body), default=0)
            pad = " " * base
            out.append(f"{pad}```latex")
            out.extend(pad + b[cut:] if b.strip() else "" for b in block)
            out.append(f"{pad}```")
            out.append("")
            continue
        if _BORDER.match(line):
            base = _indent(line)
            end = i + 1
            while end < len(lines) and lines[end].strip():
                end += 1
            out.extend(_table(lines[i:end], base))
            i = end
            continue
        if stripped.startswith(">>>"):
            base = _indent(line)
            pad = " " * base
            out.append(f"{pad}```pycon")
            while i < len(lines) and lines[i].strip():
                out.append(pad + lines[i][base:])
                i += 1
            out.append(f"{pad}```")
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class SiteDocstrings(griffe.Extension):
    """Rewrites every docstring as the module docstring above says."""

    def on_object(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = _rewrite(obj.docstring.value)
