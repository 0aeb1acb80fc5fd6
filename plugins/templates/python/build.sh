#!/usr/bin/env sh
# Builds {{name}}.wasm from app.py: `pip install -r requirements.txt && sh build.sh`.
set -eu
cd "$(dirname "$0")"
componentize-py -d wit -w provider componentize app -o "${1:-{{name}}.wasm}"
