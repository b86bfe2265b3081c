# syntax=docker/dockerfile:1
# The code-location image of a Dagster deployment: `dagster api grpc -m mlassets.definitions`,
# and what the runs it launches need (dagster-postgres, dagster-k8s, ODBC Driver 18 for the
# labels database on Azure SQL). TensorFlow and Horovod are dependencies of the package, so they
# are installed too (CPU; Gloo), though loading the definitions never imports them.
#
#   docker build -f docker/code-location.Dockerfile -t <registry>/mlassets-code-location:<tag> .
#
# The versions below must equal constraints.txt and pyproject.toml (mlassets_tests/infra checks
# it), and every pip install runs with `-c constraints.txt`.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS horovod
ARG TENSORFLOW_VERSION=2.17.1
ARG TF_KERAS_VERSION=2.17.0
ARG HOROVOD_VERSION=0.28.1
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends build-essential g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY constraints.txt ./
RUN pip install -U pip "setuptools<70" wheel "cmake<4" \
 && pip install -c constraints.txt "tensorflow==${TENSORFLOW_VERSION}" "tf-keras==${TF_KERAS_VERSION}" \
 && HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
    HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
    pip wheel --no-deps --no-build-isolation "horovod==${HOROVOD_VERSION}" -w /wheels

FROM ${PYTHON_IMAGE}
ARG TENSORFLOW_VERSION=2.17.1
ARG TF_KERAS_VERSION=2.17.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    TF_CPP_MIN_LOG_LEVEL=3

# Microsoft ODBC Driver 18 for SQL Server (Azure SQL through mssql+pyodbc, Entra ID tokens).
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl gnupg ca-certificates libgomp1 \
 && curl -fsSL https://packages.microsoft.com/keys/microsoft.asc \
      | gpg --dearmor -o /usr/share/keyrings/microsoft-prod.gpg \
 && echo "deb [signed-by=/usr/share/keyrings/microsoft-prod.gpg] https://packages.microsoft.com/debian/12/prod bookworm main" \
      > /etc/apt/sources.list.d/mssql-release.list \
 && apt-get update \
 && ACCEPT_EULA=Y apt-get install -y --no-install-recommends msodbcsql18 unixodbc \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/mlassets
COPY constraints.txt pyproject.toml setup.cfg README.md ./
COPY --from=horovod /wheels /wheels
RUN pip install -c constraints.txt "tensorflow==${TENSORFLOW_VERSION}" "tf-keras==${TF_KERAS_VERSION}" \
      /wheels/horovod-*.whl
COPY adf ./adf
COPY mlassets ./mlassets
# Editable, so that the project root (adf/, settings) is this folder; `deploy` adds
# dagster-postgres and dagster-k8s for the production instance (deploy/, Helm).
RUN pip install -c constraints.txt -e ".[deploy]" \
 && mkdir -p "$DAGSTER_HOME" \
 && python -c "import mlassets.definitions, dagster_postgres, dagster_k8s"

EXPOSE 3030
# The Helm chart runs the same command with its own arguments (dagsterApiGrpcArgs).
CMD ["dagster", "api", "grpc", "-m", "mlassets.definitions", "-h", "0.0.0.0", "-p", "3030"]
