"""Check a built documentation site (scripts/docs.sh runs this).

1. Links: every ``href``/``src`` of every HTML file of the site that is relative or points at the
   site's own host must name a file of the site (a folder means its ``index.html``), and a
   ``#fragment`` on another page must be an ``id`` on that page.
2. Rendering, in headless Chromium against the served site (``--url``): the home page, the quick
   start, the own-data tutorial and the SelfNormDense API entry load with the Material theme
   (its header, its colour in a screenshot), the expected main heading, and on the API page a
   rendered signature and rendered formulas. Screenshots (1280×1600 PNG) go to ``--screenshots``.
3. Every page, laid out by Chromium at 1280 px (a probe page served beside the site opens each in
   a same-origin iframe and measures it): no code block wider than its column (the end of a line
   would be hidden behind a scroll bar), no raw LaTeX or ``:math:`` role in the text a reader
   sees (KaTeX's hidden MathML copy excepted), no formula that KaTeX failed on or never rendered.

Exits 1 with one line per failure, naming the page and the link or the check.

    python scripts/check_site.py SITE_DIR --url http://127.0.0.1:8000/ --screenshots docs-check
"""

import argparse
import html
import html.parser
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.parse

# (path under the site, expected <h1> text, texts the rendered DOM must contain, screenshot name)
PAGES = [
    ("", "snf_tf", ["Self Normalizing Flows", "Quick start"], "home.png"),
    ("quickstart/", "Quick start", ["bash scripts/train_mnist.sh", "What you get"],
     "quickstart.png"),
    ("tutorials/own_data/", "Your own data", ["Which layers for which data", "val_nll"],
     "own_data.png"),
    ("tutorials/conv_mnist/", "Conv flow on MNIST", ["Expected output", "SNF convs: from"],
     "tutorial_conv_mnist.png"),
    ("api/layers/#snf_tf.layers.selfnorm.SelfNormDense", "Layers",
     ["SelfNormDense", "SelfNormConv2D", "reconstruction_weight"], "api_selfnormdense.png"),
]
SIGNATURE_OF = {"api_selfnormdense.png": "SelfNormDense("}
MATH_ON = {"api_selfnormdense.png"}  # pages whose formulas must come out rendered by KaTeX
PROBE = "_check_layout.html"  # written into the served site for the layout checks, then removed

# The layout probe: loads each page in a 1280×1600 iframe, waits for KaTeX, then measures.
_PROBE_HTML = r"""<!doctype html><meta charset="utf-8"><title>layout probe</title><body><script>
const PAGES = %s;
const LATEX = new RegExp(String.raw`\\(mathrm|mathcal|mathbb|frac|tfrac|quad|qquad|textstyle|` +
  String.raw`text|sum|log|det|lvert|rvert|bigl?|bigr?|Big|left|right|mid|cdot|partial|exp|` +
  String.raw`operatorname)(?![A-Za-z])|:math:`);
function visibleText(doc) {
  const walker = doc.createTreeWalker(doc.body, NodeFilter.SHOW_TEXT, {acceptNode(node) {
    // Python sources shown as code may hold a docstring's LaTeX: that is source, not prose.
    const skip = node.parentElement.closest(
      ".katex-mathml, script, style, .md-search, .language-python, .language-pycon");
    return skip ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT; }});
  const parts = [];
  while (walker.nextNode()) parts.push(walker.currentNode.nodeValue);
  return parts.join("");
}
async function measure(page) {
  const frame = document.createElement("iframe");
  frame.style.width = "1280px"; frame.style.height = "1600px";
  await new Promise((done) => {
    frame.onload = done; frame.src = page; document.body.append(frame);
  });
  await new Promise((done) => setTimeout(done, 500));
  const doc = frame.contentDocument, found = [];
  for (const code of doc.querySelectorAll("pre > code")) {
    if (code.scrollWidth > code.clientWidth + 1) {
      const line = code.textContent.split("\n").reduce((a, b) => (b.length > a.length ? b : a));
      const over = code.scrollWidth - code.clientWidth;
      found.push(`code block wider than its column by ${over} px: ${line.trim().slice(0, 90)}`);
    }
  }
  const text = visibleText(doc), latex = text.match(LATEX);
  if (latex) {
    const at = text.indexOf(latex[0]);
    const around = text.slice(Math.max(0, at - 40), at + 50).replace(/\s+/g, " ");
    found.push(`raw LaTeX in the text: ...${around}...`);
  }
  for (const error of doc.querySelectorAll(".katex-error")) {
    found.push(`KaTeX error: ${error.title}`);
  }
  const formulas = [...doc.querySelectorAll(".arithmatex")];
  const unrendered = formulas.find((m) => !m.querySelector(".katex"));
  if (unrendered) found.push(`formula not rendered: ${unrendered.textContent.slice(0, 60)}`);
  frame.remove();
  return found.map((what) => `${page}: ${what}`);
}
(async () => {
  const failures = [];
  for (const page of PAGES) failures.push(...(await measure(page)));
  const out = document.createElement("pre");
  out.id = "probe-result"; out.textContent = JSON.stringify({pages: PAGES.length, failures});
  document.body.append(out);
})();
</script></body>
"""
THEME_HEADER_RGB = (63, 81, 181)  # Material's "indigo" primary colour, the header's background


class _Collector(html.parser.HTMLParser):
    """The ids of a page, its links, and (for DOM checks) its title and main heading text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids, self.links = set(), []
        self.classes = set()
        self.title, self.h1 = "", ""
        self._in, self._h1s = [], 0
        self.text = []  # every text node, for "the page shows this" checks

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if attrs.get("name") and tag == "a":
            self.ids.add(attrs["name"])
        self.classes.update((attrs.get("class") or "").split())
        for key in ("href", "src"):
            if attrs.get(key) is not None and tag != "base":
                self.links.append(attrs[key])
        if tag in ("title", "h1"):
            self._in.append(tag)
            self._h1s += tag == "h1"

    def handle_endtag(self, tag):
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data):
        self.text.append(data)
        if "title" in self._in:
            self.title += data
        if "h1" in self._in and self._h1s == 1:  # the first h1 only
            self.h1 += data


def parse(text):
    collector = _Collector()
    collector.feed(text)
    return collector


def _target_file(site, page_url, link, host):
    """The site file a link names (None if it is outside the site), and its fragment."""
    parts = urllib.parse.urlsplit(link)
    if parts.scheme in ("mailto", "javascript", "data", "tel"):
        return None, ""
    if parts.scheme or parts.netloc:
        if parts.scheme not in ("http", "https") or parts.netloc != host:
            return None, ""  # another site
    path = urllib.parse.urljoin(page_url, parts.path) if parts.path else page_url
    path = urllib.parse.unquote(urllib.parse.urlsplit(path).path).lstrip("/")
    target = site / path
    if path == "" or path.endswith("/") or target.is_dir():
        target = target / "index.html"
    return target, parts.fragment


def check_links(site, host):
    """Failures (one line each) of the link crawl over every HTML file of ``site``."""
    site = site.resolve()
    pages = {path: parse(path.read_text(encoding="utf-8")) for path in site.rglob("*.html")}
    failures = []
    for path, page in sorted(pages.items()):
        rel = path.relative_to(site).as_posix()
        page_url = "/" + rel
        for link in page.links:
            if link == "" or link.startswith("#") and link[1:] in page.ids | {""}:
                continue
            target, fragment = _target_file(site, page_url, link, host)
            if target is None:
                continue
            if not target.resolve().is_relative_to(site):
                failures.append(f"{rel}: link {link!r} leaves the site")
            elif not target.is_file():
                failures.append(f"{rel}: broken link {link!r} (no {target.relative_to(site)})")
            elif fragment and target.suffix == ".html":
                ids = pages[target.resolve()].ids if target.resolve() in pages else set()
                if urllib.parse.unquote(fragment) not in ids:
                    failures.append(f"{rel}: link {link!r}: no id {fragment!r} on that page")
    return failures, len(pages)


def _chromium_args(binary):
    args = [binary, "--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--disable-extensions", "--mute-audio", "--disable-background-networking",
            "--window-size=1280,1600", "--virtual-time-budget=5000"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    return args


def _run_chromium(args, what):
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(args + [f"--user-data-dir={profile}"], capture_output=True,
                                text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"{what}: chromium exited {result.returncode}: "
                           f"{result.stderr.strip().splitlines()[-1:]}")
    return result.stdout


def _header_colour(png):
    from PIL import Image

    with Image.open(png) as image:
        return image.convert("RGB").getpixel((640, 8)), image.size


def check_pages(url, screenshots, binary):
    """Failures of the browser checks of PAGES against the site served at ``url``."""
    failures = []
    screenshots.mkdir(parents=True, exist_ok=True)
    for path, heading, texts, shot in PAGES:
        page_url = urllib.parse.urljoin(url, path)
        try:
            dom = _run_chromium(_chromium_args(binary) + ["--dump-dom", page_url], page_url)
            png = screenshots / shot
            png.unlink(missing_ok=True)
            # Without the #fragment: headless Chromium's screenshot of a page scrolled to a
            # fragment comes out blank (Chromium 156). SelfNormDense is the top of its page.
            shot_url = urllib.parse.urldefrag(page_url).url
            _run_chromium(_chromium_args(binary) + [f"--screenshot={png}", shot_url], page_url)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            failures.append(str(error))
            continue
        page = parse(dom)
        if "snf_tf" not in page.title:
            failures.append(f"{page_url}: title {page.title.strip()!r} does not name snf_tf")
        if page.h1.replace("¶", "").strip() != heading:
            failures.append(f"{page_url}: main heading {page.h1.strip()!r}, expected {heading!r}")
        if "md-header" not in page.classes or "md-content" not in page.classes:
            failures.append(f"{page_url}: no Material header/content in the rendered DOM")
        text = " ".join("".join(page.text).split())  # tags (e.g. highlighting spans) removed
        for expected in texts:
            if expected not in text:
                failures.append(f"{page_url}: the rendered page does not contain {expected!r}")
        if shot in MATH_ON and ("katex" not in page.classes or "katex-error" in page.classes):
            failures.append(f"{page_url}: its formulas were not rendered by KaTeX")
        signature = SIGNATURE_OF.get(shot)
        if signature:
            if "doc-signature" not in page.classes:
                failures.append(f"{page_url}: no rendered signature (class doc-signature)")
            elif signature not in _text_of_signatures(dom):
                failures.append(f"{page_url}: no signature {signature!r}")
        if not png.is_file():
            failures.append(f"{page_url}: no screenshot written to {png}")
            continue
        colour, size = _header_colour(png)
        if size != (1280, 1600):
            failures.append(f"{png}: size {size}, expected 1280×1600")
        if max(abs(a - b) for a, b in zip(colour, THEME_HEADER_RGB)) > 24:
            failures.append(f"{page_url}: header pixel {colour} is not the theme's indigo "
                            f"{THEME_HEADER_RGB}: the stylesheet did not load")
    return failures


def check_layout(site, url, binary):
    """Failures of the layout probe (module docstring, 3) over every page of the site."""
    site = pathlib.Path(site).resolve()
    pages = sorted(path.relative_to(site).as_posix() for path in site.rglob("index.html"))
    pages = ["./" + page[: -len("index.html")] for page in pages]
    probe = site / PROBE
    probe.write_text(_PROBE_HTML % json.dumps(pages), encoding="utf-8")
    try:
        args = _chromium_args(binary)
        # Virtual time runs only while the page idles; 2 s of it per page is ample.
        args = [a for a in args if not a.startswith("--virtual-time-budget")]
        args += [f"--virtual-time-budget={2000 * len(pages) + 5000}", "--dump-dom",
                 urllib.parse.urljoin(url, PROBE)]
        dom = _run_chromium(args, PROBE)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        return [f"layout probe: {error}"], 0
    finally:
        probe.unlink(missing_ok=True)
    found = re.search(r'<pre id="probe-result">(.*?)</pre>', dom, re.S)
    if not found:
        return [f"layout probe: no result after {len(pages)} pages (the probe did not finish)"], 0
    result = json.loads(html.unescape(found.group(1)))
    return result["failures"], result["pages"]


def _text_of_signatures(dom):
    """The text of the rendered signature blocks, tags and whitespace removed."""

    class _Signatures(html.parser.HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.depth, self.text = 0, []

        def handle_starttag(self, tag, attrs):
            if self.depth or "doc-signature" in (dict(attrs).get("class") or "").split():
                self.depth += 1

        def handle_endtag(self, tag):
            if self.depth:
                self.depth -= 1

        def handle_data(self, data):
            if self.depth:
                self.text.append(data)

    parser = _Signatures()
    parser.feed(dom)
    return "".join("".join(parser.text).split())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=pathlib.Path, help="the built site (mkdocs build -d SITE)")
    parser.add_argument("--url", help="where the site is served; without it, links only")
    parser.add_argument("--screenshots", type=pathlib.Path, default=pathlib.Path("docs-check"))
    parser.add_argument("--chromium", default="chromium")
    args = parser.parse_args(argv)
    if not (args.site / "index.html").is_file():
        print(f"check_site: {args.site} has no index.html (not a built site)", file=sys.stderr)
        return 1
    host = urllib.parse.urlsplit(args.url).netloc if args.url else ""
    failures, count = check_links(args.site, host)
    print(f"check_site: {count} HTML files, {len(failures)} broken link(s)")
    if args.url:
        binary = shutil.which(args.chromium) or args.chromium
        page_failures = check_pages(args.url, args.screenshots, binary)
        print(f"check_site: {len(PAGES)} pages rendered in Chromium, screenshots in "
              f"{args.screenshots}/, {len(page_failures)} failure(s)")
        failures += page_failures
        layout_failures, probed = check_layout(args.site, args.url, binary)
        print(f"check_site: {probed} pages laid out at 1280 px (code width, raw LaTeX, "
              f"formulas), {len(layout_failures)} failure(s)")
        failures += layout_failures
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
