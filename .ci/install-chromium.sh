#!/usr/bin/env bash
# Chromium from Debian's packages, for the test that opens `snakemake --report`'s HTML in a real headless browser
# (tests/test_workflow.py). Does nothing where Chromium is installed; needs root (apt-get) otherwise.
set -euo pipefail
if command -v chromium >/dev/null; then exit 0; fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends chromium >/dev/null
chromium --version
