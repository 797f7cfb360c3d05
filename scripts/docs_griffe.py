"""Griffe extension for the docs site (mkdocs.yml, mkdocstrings ``extensions``).

snf_tf's docstrings are Google style with a few reStructuredText habits that Markdown would
render badly. This rewrites them for the site only (the source stays as it is):

- ``.. math::`` directives become ``$$`` blocks and ``:math:`…``` roles ``\\( … \\)``: the
  arithmatex extension marks them and the KaTeX shipped under ``docs/assets/katex/`` renders
  them in the browser (offline);
- Sphinx roles such as ``:class:`FlowLayer``` become plain inline code;
- ``>>>`` doctest lines become fenced ``pycon`` blocks (Markdown would read ``>`` as a quote);
- reStructuredText simple tables (``====  ====`` borders) become Markdown tables, or bullet lists
  when they have no header row;
- citations of a docs page, ``docs/NAME.md: section, section`` or ``docs/NAME.md, "Heading"``,
  become links to that page, ``[NAME: section](../NAME.md#anchor)`` (the API pages are
  ``docs/api/*.md``, one folder down). A section links to a heading of the page whose anchor it
  spells (``layer details`` → ``#layer-details``; the longest run of words that does, so
  ``image pipeline training loop`` links both); words that name no heading stay text, and a
  citation that names no heading links the page alone, ``[NAME](../NAME.md)``. Fenced code is
  left alone.

It also hides private base classes: a class's ``Bases:`` line shows the public bases of a private
base (``SelfNormDense(_SelfNormLayer)`` shows ``Bases: FlowLayer``), once the package is loaded.
"""

import functools
import pathlib
import re

import griffe
from markdown.extensions.toc import slugify

_ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|exc|obj):`~?([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_BORDER = re.compile(r"^\s*=+(\s+=+)+\s*$")
_DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
# ``docs/NAME.md`` or docs/NAME.md, then ": sections" (up to ; : ( ) . " or a blank line), or
# ', "Heading"', or ", heading" (up to the next delimiter).
_DOC_CITATION = re.compile(
    r"(?:``docs/(?P<code>\w+)\.md``|(?<![\w/.])docs/(?P<name>\w+)\.md)"
    r"(?:(?P<colon>:[ \t]*\n?[ \t]*)(?P<sections>(?:[^;:()\".\n]|\n(?![ \t]*\n))+)"
    r"|(?P<qcomma>,\s+)\"(?P<quoted>[^\"]+)\""
    r"|(?P<comma>,[ \t]+)(?P<words>[^;:()\".,\n]+))?")
_FENCED = re.compile(r"(^[ \t]*```.*?^[ \t]*```[^\n]*$)", re.M | re.S)


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


@functools.cache
def _anchors(name):
    """The heading anchors of docs/NAME.md, as the site's toc extension spells them."""
    anchors, fenced = set(), False
    for line in (_DOCS / f"{name}.md").read_text().split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            anchors.add(slugify(line.lstrip("#").strip().rstrip("#").strip(), "-"))
    return anchors


def _sections(name, text):
    """``text`` cut into ``(is_heading, piece)``: runs of words that spell a heading of the page."""
    anchors = _anchors(name)
    words = list(re.finditer(r"[^\s,]+", text))
    pieces, at, i = [], 0, 0
    while i < len(words):
        for j in range(len(words), i, -1):
            span = text[words[i].start():words[j - 1].end()]
            if "," not in span and slugify(span, "-") in anchors:
                if words[i].start() > at:
                    pieces.append((False, text[at:words[i].start()]))
                pieces.append((True, span))
                at, i = words[j - 1].end(), j
                break
        else:
            i += 1
    if at < len(text):
        pieces.append((False, text[at:]))
    return pieces


def _link(name, section=None, prefix=True):
    if section is None:
        return f"[{name}](../{name}.md)"
    label = " ".join(section.split())
    return f"[{name + ': ' if prefix else ''}{label}](../{name}.md#{slugify(section, '-')})"


def _cite(match):
    name = match["code"] or match["name"]
    if not (_DOCS / f"{name}.md").is_file():
        return match[0]
    if match["quoted"] is not None:
        if slugify(match["quoted"], "-") in _anchors(name):
            return _link(name, match["quoted"])
        return _link(name) + match["qcomma"] + f'"{match["quoted"]}"'
    if match["words"] is not None:
        words = match["words"].rstrip()
        if slugify(words, "-") in _anchors(name):
            return _link(name, words) + match["words"][len(words):]
        return _link(name) + match["comma"] + match["words"]
    if match["sections"] is not None:
        pieces = _sections(name, match["sections"])
        rest = "".join(_link(name, piece, prefix=False) if heading else piece
                       for heading, piece in pieces[1:])
        if pieces[0][0]:  # the first section names a heading: "[NAME: section](...)"
            return _link(name, pieces[0][1]) + rest
        return _link(name) + match["colon"] + pieces[0][1] + rest
    return _link(name)


def _link_citations(text):
    """Citations of docs pages outside fenced code become links (the module docstring)."""
    parts = _FENCED.split(text)
    parts[::2] = [_DOC_CITATION.sub(_cite, part) for part in parts[::2]]
    return "".join(parts)


def _rewrite(text):
    text = _MATH_ROLE.sub(lambda m: "\\(" + m.group(1) + "\\)", _ROLE.sub(r"`\1`", text))
    lines = text.split("\n")
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
            out.extend(["", f"{pad}$$"])
            out.extend(pad + b[cut:] for b in block if b.strip())
            out.extend([f"{pad}$$", ""])
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
    return _link_citations("\n".join(out))


def _resolve(cls, base):
    """The class a base expression of ``cls`` names, or None when it is not loaded."""
    path = base if isinstance(base, str) else base.canonical_path
    try:
        resolved = cls.modules_collection.get_member(path)
        return resolved.final_target if resolved.is_alias else resolved
    except (griffe.AliasResolutionError, griffe.CyclicAliasError, KeyError):
        return None


def _public_bases(cls):
    """``cls.bases`` with every private base replaced by its own public bases (if it resolves)."""
    bases = []
    for base in cls.bases:
        name = (base if isinstance(base, str) else base.canonical_path).rpartition(".")[2]
        resolved = _resolve(cls, base) if name.startswith("_") else None
        found = [base] if not name.startswith("_") else \
            _public_bases(resolved) if resolved is not None and resolved.is_class else []
        bases.extend(b for b in found if str(b) not in map(str, bases))
    return bases


class _ShownBases(griffe.Class):
    """A class whose ``bases`` are the ones its ``Bases:`` line shows, while its inheritance
    (``resolved_bases``, hence the MRO, ``inherited_members`` and the merged ``__init__``) keeps
    the real ones: ``SelfNormDense`` still inherits ``refresh_log_det`` from ``_SelfNormLayer``."""

    @property
    def resolved_bases(self):
        resolved = (_resolve(self, base) for base in self.real_bases)
        return [base for base in resolved if base is not None]


def _classes(obj):
    for member in obj.members.values():
        if not member.is_alias and (member.is_module or member.is_class):
            if member.is_class:
                yield member
            yield from _classes(member)


class SiteDocstrings(griffe.Extension):
    """Rewrites every docstring, and hides private bases, as the module docstring above says."""

    def on_object(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = _rewrite(obj.docstring.value)

    def on_package(self, *, pkg, **kwargs):
        classes = [cls for cls in _classes(pkg) if type(cls) is griffe.Class]
        shown = [_public_bases(cls) for cls in classes]  # all computed from the real bases
        for cls, bases in zip(classes, shown):
            if [str(b) for b in bases] != [str(b) for b in cls.bases]:
                cls.__class__, cls.real_bases, cls.bases = _ShownBases, cls.bases, bases
