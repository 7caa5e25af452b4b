#!/bin/sh
# prometheus and promtool for the rule tests and the real-scrape test. The tests start their
# own server on a free port, so a packaged service on :9090 does not interfere; the node
# exporter and other recommends are not needed.
exec env NO_RECOMMENDS=1 sh "$(dirname "$0")/ensure_debian_package.sh" prometheus prometheus promtool
