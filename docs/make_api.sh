#!/usr/bin/env bash
# Build the API reference from the docstrings into build/api/ (pdoc); any pdoc warning
# (an unresolvable annotation, a module that does not import, a bad reference) fails the build.
#
#   docs/make_api.sh            # HTML into build/api/, open build/api/index.html
#   docs/make_api.sh OUT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-build/api}"
python="${PYTHON:-python}"
# Every public module of the package: pdoc follows the submodules that manualgrad.__all__ names,
# the others are listed here.
modules=$("$python" -c '
import pkgutil, manualgrad
others = [m.name for m in pkgutil.iter_modules(manualgrad.__path__) if m.name[0] != "_" and m.name not in manualgrad.__all__]
print(" ".join(["manualgrad"] + sorted("manualgrad." + name for name in others)))')
# shellcheck disable=SC2086
"$python" -W error::UserWarning -m pdoc --docformat google -o "$out" $modules
echo "API reference: $out/index.html"
