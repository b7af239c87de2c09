"""Offline checks of Kubernetes manifests: unknown keys, wrong types, missing required fields.

Core objects are checked against the Kubernetes Python client's object models (their
``openapi_types``, ``attribute_map`` and constructors, which refuse a missing required field).
KubeRay's custom resources are checked against the fields of KubeRay's v1 CRDs that a
RayCluster or RayJob may set, read from the CRDs of the version the guide installs
(``KUBERAY_VERSION``); the pod templates inside them go to the core models again.
"""

from __future__ import annotations

import re

KUBERAY_VERSION = "1.7.0"

# Type strings in the client's own notation: 'str', 'int', 'bool', 'float', 'object',
# 'list[T]', 'dict(str, T)', a model name (V1...), or 'enum:a|b'.
KUBERAY_TYPES = {
    "RayClusterSpec": {
        "authOptions": "AuthOptions", "autoscalerOptions": "AutoscalerOptions",
        "enableInTreeAutoscaling": "bool", "gcsFaultToleranceOptions": "object",
        "headGroupSpec": "HeadGroupSpec", "headServiceAnnotations": "dict(str, str)",
        "historyServerOptions": "object", "managedBy": "str", "networkPolicy": "object",
        "rayVersion": "str", "suspend": "bool", "tlsOptions": "object",
        "upgradeStrategy": "object", "workerGroupSpecs": "list[WorkerGroupSpec]",
    },
    "AuthOptions": {"mode": "enum:disabled|token", "secretName": "str",
                    "enableK8sTokenAuth": "bool"},
    "AutoscalerOptions": {
        "args": "list[str]", "command": "list[str]", "env": "list[V1EnvVar]",
        "envFrom": "list[V1EnvFromSource]", "idleTimeoutSeconds": "int", "image": "str",
        "imagePullPolicy": "str", "resources": "V1ResourceRequirements",
        "securityContext": "V1SecurityContext", "upscalingMode": "enum:Default|Aggressive|Conservative",
        "version": "enum:v1|v2", "volumeMounts": "list[V1VolumeMount]",
    },
    "HeadGroupSpec": {
        "enableIngress": "bool", "headService": "V1Service", "ingressOptions": "object",
        "labels": "dict(str, str)", "rayStartParams": "dict(str, str)",
        "resources": "dict(str, str)", "serviceType": "str", "template": "V1PodTemplateSpec",
    },
    "WorkerGroupSpec": {
        "groupName": "str", "idleTimeoutSeconds": "int", "labels": "dict(str, str)",
        "maxReplicas": "int", "minReplicas": "int", "numOfHosts": "int", "priority": "int",
        "rayStartParams": "dict(str, str)", "replicas": "int", "resources": "dict(str, str)",
        "scaleStrategy": "object", "suspend": "bool", "template": "V1PodTemplateSpec",
    },
    "RayJobSpec": {
        "activeDeadlineSeconds": "int", "backoffLimit": "int",
        "clusterSelector": "dict(str, str)", "deletionStrategy": "object", "entrypoint": "str",
        "entrypointNumCpus": "float", "entrypointNumGpus": "float", "entrypointResources": "str",
        "jobId": "str", "managedBy": "str", "metadata": "dict(str, str)",
        "preRunningDeadlineSeconds": "int", "rayClusterSpec": "RayClusterSpec",
        "runtimeEnvYAML": "str", "shutdownAfterJobFinishes": "bool",
        "submissionMode": "enum:K8sJobMode|HTTPMode|InteractiveMode|SidecarMode",
        "submitterConfig": "object", "submitterPodTemplate": "V1PodTemplateSpec",
        "suspend": "bool", "ttlSecondsAfterFinished": "int",
    },
}
KUBERAY_REQUIRED = {"RayClusterSpec": ["headGroupSpec"], "HeadGroupSpec": ["template"],
                    "WorkerGroupSpec": ["groupName", "maxReplicas", "minReplicas", "template"]}
CORE_KINDS = {"Deployment": "V1Deployment", "Service": "V1Service", "ConfigMap": "V1ConfigMap",
              "Secret": "V1Secret", "ServiceAccount": "V1ServiceAccount", "Namespace": "V1Namespace"}
CUSTOM_KINDS = {("ray.io/v1", "RayCluster"): "RayClusterSpec", ("ray.io/v1", "RayJob"): "RayJobSpec"}


def problems(manifest: dict) -> list[str]:
    """Everything wrong with one manifest, as 'path: what' lines (empty when it is valid)."""
    kind, api = manifest.get("kind"), manifest.get("apiVersion")
    if (api, kind) in CUSTOM_KINDS:
        out = [f"{k}: unknown top-level key" for k in manifest
               if k not in ("apiVersion", "kind", "metadata", "spec", "status")]
        out += _check(manifest.get("metadata", {}), "V1ObjectMeta", "metadata")
        return out + _check(manifest.get("spec"), CUSTOM_KINDS[(api, kind)], "spec")
    if kind in CORE_KINDS:
        return _check(manifest, CORE_KINDS[kind], kind)
    return [f"{kind}: no schema for apiVersion {api}"]


def _check(value, type_str: str, path: str) -> list[str]:
    from kubernetes.client import models

    if value is None:
        return []
    if type_str == "object":
        return []
    if type_str.startswith("enum:"):
        allowed = type_str[5:].split("|")
        return [] if value in allowed else [f"{path}: {value!r} is not one of {allowed}"]
    scalar = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str}
    if type_str in scalar:
        ok = isinstance(value, scalar[type_str]) and not (
            type_str in ("int", "float") and isinstance(value, bool))
        return [] if ok else [f"{path}: expected {type_str}, got {type(value).__name__} {value!r}"]
    if m := re.fullmatch(r"list\[(.+)\]", type_str):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        return [p for i, item in enumerate(value) for p in _check(item, m.group(1), f"{path}[{i}]")]
    if m := re.fullmatch(r"dict[(\[]str, (.+)[)\]]", type_str):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping, got {type(value).__name__}"]
        return [p for k, v in value.items() for p in _check(v, m.group(1), f"{path}.{k}")]
    if not isinstance(value, dict):
        return [f"{path}: expected a {type_str} mapping, got {type(value).__name__}"]
    if type_str in KUBERAY_TYPES:
        fields = KUBERAY_TYPES[type_str]
        out = [f"{path}.{k}: unknown field of {type_str}" for k in value if k not in fields]
        out += [f"{path}.{k}: required field of {type_str} missing"
                for k in KUBERAY_REQUIRED.get(type_str, []) if k not in value]
        return out + [p for k, v in value.items() if k in fields
                      for p in _check(v, fields[k], f"{path}.{k}")]
    model = getattr(models, type_str, None)
    if model is None:
        return [f"{path}: no model {type_str}"]
    by_json = {json_key: attr for attr, json_key in model.attribute_map.items()}
    out = [f"{path}.{k}: unknown field of {type_str}" for k in value if k not in by_json]
    for key, item in value.items():
        if key in by_json:
            out += _check(item, model.openapi_types[by_json[key]], f"{path}.{key}")
    try:  # the model's constructor refuses a missing required field
        model(**{by_json[k]: v for k, v in value.items() if k in by_json})
    except ValueError as exc:
        out.append(f"{path}: {exc}")
    return out
