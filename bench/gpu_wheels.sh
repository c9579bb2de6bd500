#!/bin/sh
# The three pure-Python packages zerosr needs that a GPU machine's preinstalled PyTorch image
# lacks (hydra-core, omegaconf, antlr4-python3-runtime), as wheels in .whl/ at the repository
# root, for a machine without network access. Run here, where pip reaches the package index;
# docs/gpu.md gives the command that installs them there.
set -e
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: -d .whl "hydra-core==1.3.2" "omegaconf==2.3.0"
# antlr4-python3-runtime 4.9.3 (the version omegaconf 2.3 pins) is published as source only: build its wheel.
python3 -m pip wheel --no-deps -w .whl "antlr4-python3-runtime==4.9.3"
ls .whl
