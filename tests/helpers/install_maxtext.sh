#!/usr/bin/env bash
# MaxText's own converters for the MaxText tests: maxtext 0.2.5 declares Python 3.12 but its standalone
# converter runs on 3.10+; install the wheel without its (TPU/GPU) dependency set, plus what the converter imports.
set -euo pipefail
workdir=$(mktemp -d)
pip download -q --no-deps --python-version 3.12 --dest "$workdir" maxtext==0.2.5
pip install -q --no-deps --ignore-requires-python "$workdir"/maxtext-0.2.5-py3-none-any.whl
rm -rf "$workdir"
