"""MkDocs hooks (mkdocs.yml ``hooks:``): links written for GitHub also work on the site.

Two kinds of relative links in the Markdown would break the site build (``mkdocs build
--strict``) although they work when the files are read on GitHub:

- links from a docs page to a repository file that the site shows as a page of its own, e.g.
  ``../RESULTS.md`` (the site has it as ``results.md``, which includes it);
- links inside a file included with ``--8<--`` from the repository root (RESULTS.md), which are
  relative to the root, e.g. ``docs/figures/reproduce_fc.png``.

A Markdown preprocessor that runs after pymdownx.snippets rewrites both into links relative to the
page. Links that resolve from the page as they are, URLs, and links that resolve nowhere are left
alone (strict mode reports the last kind).
"""

import pathlib
import posixpath
import re

from markdown.extensions import Extension
from markdown.preprocessors import Preprocessor

# Repository files that the site shows as pages: file -> page (relative to docs/).
SITE_PAGES = {"RESULTS.md": "results.md"}

_LINK = re.compile(r"(\]\()([^)\s#]+)((?:#[^)\s]*)?(?:\s+\"[^\"]*\")?\))")
_state = {"root": pathlib.Path("."), "docs": "docs", "page": "index.md"}


def _rewrite(target):
    if ":" in target or target.startswith("/"):
        return target  # a URL, or site-absolute
    root, docs = _state["root"], _state["docs"]
    page_dir = posixpath.dirname(_state["page"])
    from_page = posixpath.normpath(posixpath.join(docs, page_dir, target))
    from_root = posixpath.normpath(target)
    for repo_path in (from_page, from_root):
        if not (root / repo_path).exists():
            continue
        if repo_path in SITE_PAGES:
            in_docs = SITE_PAGES[repo_path]
        elif repo_path.startswith(docs + "/"):
            in_docs = repo_path[len(docs) + 1:]
        else:
            return target  # outside the site: strict mode will say so
        return posixpath.relpath(in_docs, page_dir or ".")
    return target


class _RepositoryLinks(Preprocessor):
    def run(self, lines):
        return [_LINK.sub(lambda m: m.group(1) + _rewrite(m.group(2)) + m.group(3), line)
                for line in lines]


class _RepositoryLinksExtension(Extension):
    def extendMarkdown(self, md):  # noqa: N802 - Python-Markdown's name
        # pymdownx.snippets runs at priority 32: this runs right after it.
        md.preprocessors.register(_RepositoryLinks(md), "snf_repository_links", 31)


def on_config(config, **kwargs):
    root = pathlib.Path(config.config_file_path).resolve().parent
    _state["root"] = root
    _state["docs"] = pathlib.Path(config.docs_dir).resolve().relative_to(root).as_posix()
    config.markdown_extensions.append(_RepositoryLinksExtension())
    return config


def on_page_markdown(markdown, page, **kwargs):
    _state["page"] = page.file.src_uri
    return markdown
