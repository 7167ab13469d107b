// ESLint for the JavaScript and CSS we write: the widgets' front ends (storylib/widgets/js), the web app
// (storylib/webapp) and the book's require.js config (scripts). `make lint` runs it. eslint and its plugins are npm
// packages that scripts/assets.sh installs into .assets/node_modules, so they are loaded from there.
import { createRequire } from "node:module";

const require = createRequire(new URL("./.assets/node_modules/", import.meta.url));
const js = require("@eslint/js");
const css = require("@eslint/css").default;
const globals = require("globals");

export default [
  { ignores: [".venv/", ".assets/", "_build/", "dist/", "workspace/", "exercises/", "solutions/"] },
  { files: ["**/*.js", "**/*.mjs"], ...js.configs.recommended },
  {
    // anywidget ES modules, run in the browser (JupyterLab or the static book); each one is self-contained
    files: ["storylib/widgets/js/*.js"],
    ignores: ["storylib/widgets/js/_dom.js"],
    // storylib.widgets.front_end puts js/_dom.js before each module: its helpers are globals here
    languageOptions: { ecmaVersion: 2022, sourceType: "module", globals: { ...globals.browser, el: "readonly", greetKernel: "readonly", askBox: "readonly" } },
  },
  {
    files: ["storylib/widgets/js/_dom.js"],
    languageOptions: { ecmaVersion: 2022, sourceType: "script", globals: globals.browser },
  },
  {
    // the storyteller's browser engine: an ES module for the browser and node; storylib.web.engine_module puts the
    // tokenizer part of storylib/widgets/js/tokens.js (compileTokenizer) before it
    files: ["storylib/web/*.js"],
    languageOptions: { ecmaVersion: 2022, sourceType: "module", globals: { ...globals.browser, compileTokenizer: "readonly" } },
  },
  {
    // classic <script>s
    files: ["storylib/webapp/*.js", "scripts/*.js"],
    languageOptions: { ecmaVersion: 2022, sourceType: "script", globals: globals.browser },
  },
  { files: ["eslint.config.mjs"], languageOptions: { globals: globals.node } },
  {
    files: ["**/*.css"],
    language: "css/css",
    plugins: { css },
    // use-baseline would reject what we use as progressive enhancement (ui-monospace with fallbacks, resize)
    rules: { ...css.configs.recommended.rules, "css/use-baseline": "off" },
  },
];
