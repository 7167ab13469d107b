// LLM101n book: make the ipywidgets embed manager find everything on this site, never on a CDN.
// Loaded on pages with widgets, after require.js and before embed-amd.js (see nb_ipywidgets_js in
// _config.yml). Served from <site root>/_static/, so the root is computed from this script's own URL
// and the same file works on every page, at any depth, and under any hosting prefix.
(function () {
  "use strict";
  var script = document.currentScript;
  var staticRoot = new URL(".", script.src).href; // .../_static/  (drops ?v=checksum)
  var siteRoot = new URL("..", staticRoot).href;
  window.LLM101N_SITE_ROOT = siteRoot;

  // Where the font files of the widget CSS live. embed-amd.js holds two webpack bundles: one takes
  // its public path from this global, the other (libembed-amd) from its AMD module URL, which the
  // "@jupyter-widgets/html-manager/dist" path below makes <static>/jupyter-widgets/libembed-amd.
  window.__jupyter_widgets_assets_path__ = staticRoot + "jupyter-widgets/";

  window.requirejs.config({
    paths: {
      // anywidget's AMD front end: define(["@jupyter-widgets/base"], ...); embed-amd.js defines the base
      anywidget: staticRoot + "anywidget/index",
      "@jupyter-widgets/html-manager/dist": staticRoot + "jupyter-widgets",
    },
  });

  // embed-amd.js falls back to a CDN for modules require cannot find; it reads the fallback from any
  // script tag's data-jupyter-widgets-cdn. Point it at a local folder that holds nothing, so an
  // unknown widget module fails here, visibly, instead of loading code from the internet.
  script.setAttribute("data-jupyter-widgets-cdn", staticRoot + "no-cdn/");

  // @jupyter-widgets/controls typesets widget labels with the MathJax 2 call
  // MathJax.Hub.Queue(["Typeset", MathJax.Hub, el]); the book loads MathJax 3, where that throws.
  // Forward it to MathJax 3. Installed at DOMContentLoaded (MathJax is a deferred script), before
  // embed-amd.js renders widgets at window "load".
  document.addEventListener("DOMContentLoaded", function () {
    var MJ = window.MathJax;
    if (!MJ || MJ.Hub || !MJ.startup) return; // no MathJax 3 on this page
    MJ.Hub = {
      Queue: function () {
        var els = [];
        for (var i = 0; i < arguments.length; i++) {
          var job = arguments[i];
          if (Array.isArray(job) && job[0] === "Typeset" && job[2]) els.push(job[2]);
        }
        if (!els.length) return;
        MJ.startup.promise
          .then(function () { return MJ.typesetPromise(els); })
          .catch(function (err) { console.warn("MathJax typeset of a widget label failed", err); });
      },
    };
  });
})();
