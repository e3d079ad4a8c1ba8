# The server image (deploy/Dockerfile), built by deploy/build_image.py from a Debian bookworm base
# (mmdebstrap) and a wheelhouse downloaded beforehand; the build itself runs with no network.
#   make image                     localhost/qwen-triton:<version>      (CUDA torch; GPUs via the NVIDIA toolkit)
#   make image IMAGE_VARIANT=cpu   localhost/qwen-triton:<version>-cpu  (CPU torch)
# Needs root (podman, mmdebstrap); reruns only when an input changed (the image carries their hash).
IMAGE_VARIANT ?= cuda

.PHONY: image

image: setup k8s-tools
	$(PY) deploy/build_image.py --variant $(IMAGE_VARIANT)
