#!/usr/bin/env bash
# Install Debian's chromium for the docs browser test (tests/test_docs.py), if it is missing.
# Only as root and only where apt-get exists; never fails the set-up: without chromium the
# browser test skips and says why. Quiet unless it installs something or cannot.
set -u
if [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" != "0" ]; then
  echo "== chromium: not installed and not root; the docs browser test will skip (install it: apt-get install chromium)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "== chromium: not installed and no apt-get here; the docs browser test will skip"
  exit 0
fi
echo "== installing chromium (Debian package) for the docs browser test"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if apt-get update -qq >"$log" 2>&1 \
   && apt-get install -y -qq --no-install-recommends chromium >>"$log" 2>&1 \
   && [ -x /usr/bin/chromium ]; then
  echo "== chromium installed: $(/usr/bin/chromium --version 2>/dev/null || echo '?')"
else
  echo "== chromium: installation failed; the docs browser test will skip. Last lines of apt's output:"
  tail -n 5 "$log" | sed 's/^/   /'
fi
rm -f "$log"
exit 0
