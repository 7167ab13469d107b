"""JavaScript shared by the widgets' self-contained ES modules (prepended to each `_esm`)."""

# el(tag, attrs, parent, text): create an element, set its attributes and text, append it to parent.
DOM_JS = r"""
function el(tag, attrs, parent, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
"""
