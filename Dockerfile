# The depthlab image for GPU clusters: Ray's CUDA image plus this project, installed at /app
# (the working_dir of infra/k8s/rayjob.yaml), with the `server` extra so that the same image
# also runs the MLflow server of infra/k8s/mlflow.yaml (PostgreSQL driver). Build and push it
# where your nodes pull from (docs/cluster.md):
#   docker build -t YOUR-REGISTRY/depthlab:latest . && docker push YOUR-REGISTRY/depthlab:latest
# Plain Dockerfile syntax only, so the classic builder and BuildKit build it alike.
FROM rayproject/ray:2.60.0-py311-cu128

# A C compiler and libjpeg-turbo's headers build training/data/_jpegroi.c, the loader's
# region-of-interest JPEG decoder (without them the build goes on and decodes whole images).
RUN sudo apt-get update -qq \
 && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libjpeg-dev \
 && sudo rm -rf /var/lib/apt/lists/*

# The image runs as `ray`; pip builds inside /app, so `ray` owns it. (WORKDIR alone would make
# it root's under the classic builder, BuildKit's under the user: create it explicitly.)
RUN sudo mkdir -p /app && sudo chown ray:users /app
WORKDIR /app
# Dependencies first, in their own layer: code edits do not reinstall torch.
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users training/data/_jpegroi.c training/data/
RUN mkdir -p orchestrator training/data \
 && touch orchestrator/__init__.py training/__init__.py training/data/__init__.py \
 && pip install --no-cache-dir ".[server]" \
 && pip uninstall -y depthlab
COPY --chown=ray:users orchestrator orchestrator
COPY --chown=ray:users training training
COPY --chown=ray:users pipelines pipelines
COPY --chown=ray:users configs configs
COPY --chown=ray:users infra infra
RUN pip install --no-cache-dir --no-deps -e .
ENV PYTHONPATH=/app
