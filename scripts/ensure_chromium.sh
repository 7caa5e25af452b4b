#!/bin/sh
# Debian's chromium at /usr/bin/chromium for the reviewer-page browser test (test tools
# cannot download browsers here, so the distribution's build is driven through Playwright).
exec sh "$(dirname "$0")/ensure_debian_package.sh" chromium /usr/bin/chromium
