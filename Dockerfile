# One image for every part of pneumonode (serve, dicom-listen, worker, api), CPU or CUDA:
#   docker build -t pneumonode:cpu .
#   docker build -t pneumonode:cuda --build-arg VARIANT=cuda .
# Stages: web (the page, built by Vite) -> build (a virtual environment with torch for VARIANT
# and pneumonode) -> runtime (that environment, the shipped model, a non-root user).
#
# VARIANT=cpu installs PyTorch's CPU-only wheels (no CUDA libraries: a far smaller image).
# VARIANT=cuda installs PyPI's Linux wheels, which bring the CUDA runtime and cuDNN as pip
# packages, so the base stays python:3.11-slim; the host needs the NVIDIA driver (new enough for
# the CUDA of that torch build, see `pip show nvidia-cuda-runtime`) and the container toolkit.
# Another CUDA build: --build-arg TORCH_INDEX_CUDA=https://download.pytorch.org/whl/cu126
# The wheels bring their own native libraries (decoders included): the base image's libc,
# libstdc++, libgcc and zlib are all they link against, so no apt packages are needed.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:22-bookworm-slim

FROM ${NODE_IMAGE} AS web
WORKDIR /build/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY web/ ./
# vite.config.js writes to ../src/pneumonode/api/static
RUN npm run build

FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
# Must equal pyproject.toml's pins (tests/deploy/test_compose.py checks).
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX_CPU=https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX_CUDA=https://pypi.org/simple
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
RUN case "$VARIANT" in \
        cpu) index="$TORCH_INDEX_CPU" ;; \
        cuda) index="$TORCH_INDEX_CUDA" ;; \
        *) echo "VARIANT must be cpu or cuda, not '$VARIANT'" >&2; exit 1 ;; \
    esac \
    && pip install --index-url "$index" \
        "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
WORKDIR /build
# Dependencies first, from pyproject.toml alone, so that a change in src/ reuses this layer.
# torch is already there: 2.14.1+cpu satisfies ==2.14.1.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > requirements.txt \
    && pip install -r requirements.txt
COPY src/ src/
RUN pip install --no-deps . \
    && python -c "import torch, pneumonode; print('torch', torch.__version__, 'pneumonode', pneumonode.__version__)"

FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="pneumonode" \
      org.opencontainers.image.description="DICOM node that finds pneumothorax on chest radiographs (AI, not for clinical use)" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.pneumonode.variant="${VARIANT}"
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/pneumonode --no-create-home \
        --shell /usr/sbin/nologin pneumonode \
    && install -d -o pneumonode -g pneumonode -m 0750 /var/lib/pneumonode
COPY --from=build /opt/venv /opt/venv
# The page is not package data: it goes where pneumonode.api.app.WEB_DIST looks.
COPY --from=web /build/src/pneumonode/api/static /opt/venv/lib/python3.11/site-packages/pneumonode/api/static
COPY models/pneumothorax-triage-lite2 /opt/pneumonode/models/pneumothorax-triage-lite2
COPY deploy/healthcheck.py /opt/pneumonode/healthcheck.py
# In a container the listener and the API listen on every interface (publishing ports decides
# what is reachable); the model folder is read-only, so the ONNX export is cached in the data dir.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PNEUMONODE_DATA_DIR=/var/lib/pneumonode \
    PNEUMONODE_MODEL_PATH=/opt/pneumonode/models/pneumothorax-triage-lite2 \
    PNEUMONODE_DICOM_HOST=0.0.0.0 \
    PNEUMONODE_API_HOST=0.0.0.0 \
    XDG_CACHE_HOME=/var/lib/pneumonode/cache \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER pneumonode
WORKDIR /var/lib/pneumonode
EXPOSE 11112 8000
ENTRYPOINT ["pneumonode"]
CMD ["serve"]
