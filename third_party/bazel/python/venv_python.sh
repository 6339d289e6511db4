#!/bin/sh
# Interpreter of the Bazel Python toolchain: the project's virtualenv, .venv at the workspace
# root (`make bazel-test` creates it). Bazel runs this script through runfiles symlinks, so the
# workspace is found from the script's real location. The venv's python is run by its own path
# (not resolved) so that Python picks up the venv's site-packages.
workspace="$(dirname "$(readlink -f "$0")")/../../.."
exec "$workspace/.venv/bin/python" "$@"
