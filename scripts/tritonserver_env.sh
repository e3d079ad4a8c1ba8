#!/usr/bin/env bash
# Print the environment that runs the nvidia-pytriton wheel's tritonserver by hand (backend dir,
# LD_LIBRARY_PATH, the virtualenv for the Python stubs): eval "$(scripts/tritonserver_env.sh)"
exec "$(dirname "$0")/../.venv/bin/python" "$(dirname "$0")/serve.py" --print-env
