# syntax=docker/dockerfile:1
# The training image for the Azure Batch GPU pool: TensorFlow with GPU, Horovod built with NCCL
# (GPU allreduce) and Gloo (rendezvous, CPU ops), openssh-server for the multi-instance task's
# workers, and mlassets (its training program, Pipes, the lake roles).
#
#   docker build -f docker/training.Dockerfile -t <registry>/mlassets-training:<tag> .
#
# The versions below must equal constraints.txt and pyproject.toml (mlassets_tests/infra checks
# it), and every pip install runs with `-c constraints.txt`, so a drift fails the build.
ARG CUDA_IMAGE=nvidia/cuda:12.3.2-devel-ubuntu22.04
FROM ${CUDA_IMAGE}

ARG TENSORFLOW_VERSION=2.17.1
ARG TF_KERAS_VERSION=2.17.0
ARG HOROVOD_VERSION=0.28.1

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=3

# Python 3.11 (deadsnakes) and the OpenSSH server the coordination task starts in each node's
# container (horovodrun reaches the workers over it). NCCL and its headers come with the CUDA
# devel image, held at the build for its CUDA version.
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gnupg ca-certificates curl \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      python3.11 python3.11-dev python3.11-venv \
      build-essential g++ git openssh-server openssh-client \
 && mkdir -p /run/sshd \
 && rm -rf /var/lib/apt/lists/*

RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /opt/mlassets
COPY constraints.txt pyproject.toml setup.cfg README.md ./

RUN pip install -U pip "setuptools<70" wheel "cmake<4" \
 && pip install -c constraints.txt \
      "tensorflow[and-cuda]==${TENSORFLOW_VERSION}" "tf-keras==${TF_KERAS_VERSION}"

# Horovod against exactly this TensorFlow: NCCL for GPU allreduce, Gloo (no MPI) as the launcher
# the Batch task uses (horovodrun --gloo over SSH). CUDA 12 has no compute capability below 5.0,
# so the kernels are built for the GPUs Batch offers: T4 (7.5), A10 (8.6), A100 (8.0), H100 (9.0).
RUN HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_HOME=/usr HOROVOD_NCCL_LINK=SHARED \
    HOROVOD_BUILD_CUDA_CC_LIST=70,75,80,86,89,90 \
    HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
    HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
    pip install -c constraints.txt --no-build-isolation --no-deps "horovod==${HOROVOD_VERSION}" \
 && horovodrun --check-build | tee /tmp/horovod-build.txt \
 && grep -q "\[X\] NCCL" /tmp/horovod-build.txt \
 && grep -q "\[X\] Gloo" /tmp/horovod-build.txt \
 && grep -q "\[X\] TensorFlow" /tmp/horovod-build.txt

# mlassets itself, editable so that its project root (adf/, settings) is this folder.
COPY adf ./adf
COPY mlassets ./mlassets
RUN pip install -c constraints.txt -e . \
 && python -c "import horovod.tensorflow, mlassets.training_program.train"

# The Batch task gives the command (mlassets.roles.azure_batch); by itself the image reports
# what Horovod was built with.
CMD ["horovodrun", "--check-build"]
