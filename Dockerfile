# The depthlab image for GPU clusters: Ray's CUDA image plus this project, installed at /app
# (the working_dir of infra/k8s/rayjob.yaml; infra/aws/cluster.yaml can use it as its docker
# image). Build and push it where your nodes pull from:
#   docker build -t YOUR-REGISTRY/depthlab:latest . && docker push YOUR-REGISTRY/depthlab:latest
FROM rayproject/ray:2.60.0-py311-cu128

# A C compiler and libjpeg-turbo's headers build training/_jpegroi.c, the loader's
# region-of-interest JPEG decoder (without them the build goes on and decodes whole images).
RUN sudo apt-get update -qq \
 && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libjpeg-dev \
 && sudo rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Dependencies first, in their own layer: code edits do not reinstall torch.
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users training/_jpegroi.c training/
RUN mkdir -p orchestrator training \
 && touch orchestrator/__init__.py training/__init__.py \
 && pip install --no-cache-dir . \
 && pip uninstall -y depthlab
COPY --chown=ray:users orchestrator orchestrator
COPY --chown=ray:users training training
COPY --chown=ray:users pipelines pipelines
COPY --chown=ray:users configs configs
COPY --chown=ray:users infra infra
RUN pip install --no-cache-dir --no-deps -e .
ENV PYTHONPATH=/app
