// Renders the formulas that pymdownx.arithmatex (generic mode) wraps in \( \) and \[ \] with
// the KaTeX files shipped under assets/katex/ (no network). document$ is Material's page
// observable: it fires on the first load and after every instant-navigation page change.
document$.subscribe(({ body }) => {
  renderMathInElement(body, {
    delimiters: [
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
    // Docstrings mix Unicode (∂, ξ, ᵀ) into their LaTeX: render it as text, without warnings.
    strict: "ignore",
    throwOnError: false,
  });
});
