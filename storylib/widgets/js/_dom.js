// What several widgets' front ends share; storylib.widgets.front_end puts it before each of them (anywidget loads
// one module from a blob: URL, so a widget cannot import this file).
/* exported el, greetKernel, askBox */

// el(tag, attrs, parent, text): create an element, set its attributes and text, append it to parent.
function el(tag, attrs, parent, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}

// The hello handshake: only a live kernel answers (storylib/widgets/_live.py), so saved widget state never makes a
// static book page look live. greetKernel(model, onLive) says hello with a nonce of this page load and calls
// onLive() when the kernel answers it.
const HELLO_SESSION = Math.random().toString(36).slice(2, 12);  // this page load
let helloCount = 0;  // (names no widget module uses: they share its scope)
function greetKernel(model, onLive) {
  model.on("msg:custom", (msg) => {
    if (msg.type === "hello" && msg.nonce.startsWith(HELLO_SESSION + ":")) onLive();
  });
  model.send({ type: "hello", nonce: `${HELLO_SESSION}:${++helloCount}` });  // a static page has no kernel: no answer
}

// askBox(model, box, button, type): the button, or Enter in the box, sends {type, text} with the box's text (if
// any) to the kernel and empties the box.
function askBox(model, box, button, type) {
  button.addEventListener("click", () => {
    if (!box.value.trim()) return;
    model.send({ type, text: box.value });
    box.value = "";
  });
  box.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !button.disabled) { e.preventDefault(); button.click(); }
  });
}
