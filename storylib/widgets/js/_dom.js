// What several widgets' front ends share; storylib.widgets.front_end puts it before each of them (anywidget loads
// one module from a blob: URL, so a widget cannot import this file).
/* exported el */

// el(tag, attrs, parent, text): create an element, set its attributes and text, append it to parent.
function el(tag, attrs, parent, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
